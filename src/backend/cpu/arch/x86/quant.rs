//! int8 and nf4 weights against activations rounded to integers (see
//! [`crate::backend::cpu::quant`] for the summation order every kernel keeps):
//! - rows: sixteen blocks' integer sums reduced together, int8 a block at a time
//!   (`vpmaddwd`), nf4 a pair of blocks at a time (one 64-byte load, two `vpermb`
//!   lookups, two `vpdpbusd`), for one token or up to four;
//! - panels: 32 rows a vector lane a row, so each `vpdpwssd` (int8) or `vpdpbusd` (nf4)
//!   does a block's products for sixteen rows: stored so at load
//!   ([`crate::tensor::panels`]; int8 bytes widened, nf4 nibbles looked up in the
//!   kernel), or packed from rows for each product;
//! - the AVX-512 activation rounder, and AVX2 one-token dots.

use super::{hsum512, lane_masks, sum_chunk_pairs, sum_chunks, sum_halves, transpose16, I32Lanes};
use crate::backend::cpu::arch::{prefetch_ahead, prefetch_l1, prefetch_l2};
use crate::backend::cpu::quant::rows::{
    block_scale, q8_index, Act, BlockScale, QRow, QTok, TokenCodes, CLASSES, PAIR,
};
use crate::backend::cpu::tuning::{PREFETCH_AHEAD, QUANT_PANEL_TOKENS};
use crate::tensor::panels::class_order;
use crate::tensor::quant::{BLOCK, NF4_I8};
use _mm512_castps_si512 as int;
use _mm512_castsi512_ps as ps;
use half::bf16;
use std::arch::x86_64::*;
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

/// Blocks `g..g + m` (at most sixteen) of a row against each token of `x`: lane `j` is
/// block `g + j`'s integer sum (zero past `m`), each block widened once for all the
/// tokens. Blocks are reduced in pairs as they come ([`sum_halves`], [`sum_chunk_pairs`],
/// [`sum_chunks`]), so few vectors are live.
#[inline(always)]
// indices over several arrays of registers in step; no closures (see nf4_group_tokens)
#[allow(clippy::needless_range_loop)]
unsafe fn q8_group_tokens<const T: usize>(
    qs: &[i8],
    x: [QTok; T],
    g: usize,
    m: usize,
) -> [__m512i; T] {
    let zero = _mm512_setzero_si512();
    let mut u = [[zero; 4]; T];
    for k in 0..4 {
        let mut h = [[zero; 2]; T];
        for i in 0..2 {
            let j = 4 * k + 2 * i;
            if j < m {
                let b = g + j;
                q8_prefetch(qs, b);
                let wa = q8_words512(qs, b);
                let wc = if j + 1 < m {
                    q8_words512(qs, b + 1)
                } else {
                    [zero; 2]
                };
                for t in 0..T {
                    let a = q8_block512(wa, x[t], b);
                    let c = if j + 1 < m {
                        q8_block512(wc, x[t], b + 1)
                    } else {
                        zero
                    };
                    h[t][i] = halves(a, c);
                }
            }
        }
        for t in 0..T {
            u[t][k] = chunk_pairs(h[t][0], h[t][1]);
        }
    }
    let mut out = [zero; T];
    for t in 0..T {
        out[t] = chunks(u[t]);
    }
    out
}

/// The rows stored one after another in `qs` and `scales` against `T` tokens at once
/// (`out[t]` the outputs for `x[t]`), each row widened once for all of them and its start
/// asked for into L1 two rows ahead. A token's block sums are exact integers, so its
/// outputs do not depend on the tokens beside it.
#[target_feature(enable = "avx512f,avx512bw")]
// indices over several arrays of registers in step; no closures (see nf4_group_tokens)
#[allow(clippy::needless_range_loop)]
pub unsafe fn dots_q8_avx512_tokens<const T: usize>(
    qs: &[i8],
    scales: &[f32],
    x: [QTok; T],
    out: [&mut [f32]; T],
) {
    let rows = out[0].len();
    let nb = scales.len() / rows.max(1);
    let n = nb * BLOCK;
    assert!(
        qs.len() == rows * n && out.iter().all(|o| o.len() == rows),
        "dots: rows and outputs disagree"
    );
    for k in 0..rows {
        prefetch_l1(qs.as_ptr().wrapping_add((k + 2) * n));
        // in bounds: qs holds `rows` rows (asserted), scales at least as many
        let row = qs.get_unchecked(k * n..(k + 1) * n);
        let sc = scales.get_unchecked(k * nb..(k + 1) * nb);
        let mut acc = [_mm512_setzero_ps(); T];
        // whole groups (no bounds tested), then the last, shorter one
        let whole = nb / CLASSES * CLASSES;
        for g in (0..whole).step_by(CLASSES) {
            let m = CLASSES;
            let s = q8_group_tokens::<T>(row, x, g, m);
            for t in 0..T {
                acc[t] = add_blocks(acc[t], s[t], sc, x[t].scale, g, m);
            }
        }
        if whole < nb {
            let (g, m) = (whole, nb - whole);
            let s = q8_group_tokens::<T>(row, x, g, m);
            for t in 0..T {
                acc[t] = add_blocks(acc[t], s[t], sc, x[t].scale, g, m);
            }
        }
        for t in 0..T {
            out[t][k] = hsum512(acc[t]);
        }
    }
}

/// One int8 row `qs [n]`, `scales [n / 64]` against one token.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn dot_q8_avx512(qs: &[i8], scales: &[f32], x: QTok) -> f32 {
    let mut out = [0.0];
    dots_q8_avx512_tokens::<1>(qs, scales, [x], [&mut out]);
    out[0]
}

/// [`dot_q8_avx512`] over `out.len()` rows stored one after another in `qs` and `scales`.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn dots_q8_avx512(qs: &[i8], scales: &[f32], x: QTok, out: &mut [f32]) {
    dots_q8_avx512_tokens::<1>(qs, scales, [x], [out])
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
/// 2p+1: 32..64]`, the order of [`q8_index`]. `HALF`: the last pair of an odd
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

/// One nf4 row `packed [n / 2]`, `scales [n / 64]` against one token.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub unsafe fn dot_nf4_vnni(packed: &[u8], scales: &[bf16], x: QTok) -> f32 {
    let mut out = [0.0];
    dots_nf4_vnni_tokens::<1>(packed, scales, [x], [&mut out]);
    out[0]
}

/// [`dot_nf4_vnni`] over `out.len()` rows stored one after another in `packed` and
/// `scales`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub unsafe fn dots_nf4_vnni(packed: &[u8], scales: &[bf16], x: QTok, out: &mut [f32]) {
    dots_nf4_vnni_tokens::<1>(packed, scales, [x], [out])
}

/// Blocks `g..g + m` (`g` even, `m` at most sixteen) of an nf4 row against each token of
/// `x`: lane `j` is block `g + j`'s integer sum with its correction (zero past `m`), each
/// pair of blocks decoded once for all the tokens. A pair's two blocks share a vector, so
/// one step fewer reduces them ([`sum_chunk_pairs`], [`sum_chunks`]). (Plain loops:
/// written with closures it was not inlined into the AVX-512 code and ran six times
/// slower.)
#[inline(always)]
// indices over several arrays of registers in step; no closures (see nf4_group_tokens)
#[allow(clippy::needless_range_loop)]
unsafe fn nf4_group_tokens<const T: usize>(
    packed: &[u8],
    x: [QTok; T],
    g: usize,
    m: usize,
    table: __m512i,
) -> [__m512i; T] {
    let zero = _mm512_setzero_si512();
    let mut u = [[zero; 4]; T];
    for k in 0..4 {
        // pairs 2k and 2k + 1 of the group, decoded; past the group's blocks, none
        let mut w = [[zero; 2]; 2];
        let mut live = [false; 2];
        for h in 0..2 {
            let (j, p) = (2 * k + h, g / 2 + 2 * k + h);
            prefetch_ahead(packed.as_ptr().wrapping_add(p * BLOCK), PREFETCH_AHEAD);
            if 2 * j + 1 < m {
                (w[h], live[h]) = (nf4_pair::<false>(packed, p, table), true);
            } else if 2 * j < m {
                (w[h], live[h]) = (nf4_pair::<true>(packed, p, table), true);
            }
        }
        for t in 0..T {
            let mut v = [zero; 2];
            for h in 0..2 {
                if live[h] {
                    v[h] = nf4_pair_lanes(w[h], x[t], g / 2 + 2 * k + h);
                }
            }
            u[t][k] = chunk_pairs(v[0], v[1]);
        }
    }
    let mask = (u32::MAX >> (32 - m)) as __mmask16;
    let mut out = [zero; T];
    for t in 0..T {
        let corr = _mm512_maskz_loadu_epi32(mask, x[t].block_corr.as_ptr().add(g));
        out[t] = _mm512_add_epi32(chunks(u[t]), corr);
    }
    out
}

/// The nf4 rows stored one after another in `packed` and `scales` against `T` tokens at
/// once (`out[t]` the outputs for `x[t]`), each row decoded once for all of them, the
/// table loaded once, each row's start asked for into L1 two rows ahead (without that,
/// generation lost two points of the bandwidth limit). A token's block sums are exact
/// integers, so its outputs do not depend on the tokens beside it.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
// indices over several arrays of registers in step; no closures (see nf4_group_tokens)
#[allow(clippy::needless_range_loop)]
pub unsafe fn dots_nf4_vnni_tokens<const T: usize>(
    packed: &[u8],
    scales: &[bf16],
    x: [QTok; T],
    out: [&mut [f32]; T],
) {
    let table = nf4_table_u8x4();
    let rows = out[0].len();
    let nb = scales.len() / rows.max(1);
    let bytes = nb * BLOCK / 2;
    assert!(
        packed.len() == rows * bytes && out.iter().all(|o| o.len() == rows),
        "dots: rows and outputs disagree"
    );
    for k in 0..rows {
        prefetch_l1(packed.as_ptr().wrapping_add((k + 2) * bytes) as *const i8);
        // in bounds: packed holds `rows` rows (asserted), scales at least as many
        let row = packed.get_unchecked(k * bytes..(k + 1) * bytes);
        let sc = scales.get_unchecked(k * nb..(k + 1) * nb);
        let mut acc = [_mm512_setzero_ps(); T];
        // whole groups (no bounds tested), then the last, shorter one
        let whole = nb / CLASSES * CLASSES;
        for g in (0..whole).step_by(CLASSES) {
            let m = CLASSES;
            let s = nf4_group_tokens::<T>(row, x, g, m, table);
            for t in 0..T {
                acc[t] = add_blocks(acc[t], s[t], sc, x[t].scale, g, m);
            }
        }
        if whole < nb {
            let (g, m) = (whole, nb - whole);
            let s = nf4_group_tokens::<T>(row, x, g, m, table);
            for t in 0..T {
                acc[t] = add_blocks(acc[t], s[t], sc, x[t].scale, g, m);
            }
        }
        for t in 0..T {
            out[t][k] = hsum512(acc[t]);
        }
    }
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
    pub codes: [*const u8; QUANT_PANEL_TOKENS],
    pub scale: [*const f32; QUANT_PANEL_TOKENS],
    pub corr: [*const i32; QUANT_PANEL_TOKENS],
}

/// `out[j][r]` = row `r` of a packed panel ([`pack_panel`]) dotted with token `x[j]`,
/// each summed in [`crate::backend::cpu::scalar::quant_dot`]'s order: a block's integer sum in a lane of
/// `vpdpwssd` (int8) or `vpdpbusd` (nf4, started at the block's correction), then, as
/// f32, times the scales, into its class's sum; the blocks of a class one after the
/// other. The classes come in bit-reversed order, so each finished class completes a
/// subtree of [`crate::backend::cpu::scalar::tree16`] with the ones before it and only four partial sums a
/// token wait. One broadcast of a token's codes meets two vectors of weights (32 rows).
/// The first `N` of `x` must hold `nb` blocks of codes of the panel's kind
/// ([`crate::backend::cpu::quant::panel::Panel`] checks them); row `r < rows` of token `j` is stored at `y[j] + r`.
/// `ahead`: `(p, lines)`, cache lines from `p` to ask for into L2 along the way (the next
/// panel's rows).
///
/// `STORED`: the weights are a panel as stored ([`crate::tensor::panels`]: blocks in the
/// order visited; int8 bytes widened here, nf4 nibbles looked up here, and their scales
/// bf16) rather than packed words.
///
/// # Safety
/// `words` holds `nb` blocks of the panel (packed: `[nb, panel_words, 32]` u32; stored:
/// `nb * 2048` bytes, nf4 half that) and `scales` `nb * 32` scales (f32; stored nf4's
/// bf16).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn panel_kernel<const N: usize, const STORED: bool>(
    words: *const u8,
    scales: *const u8,
    nb: usize,
    x: &Tokens,
    y: [*mut f32; N],
    rows: usize,
    ahead: (*const u8, usize),
) {
    panel_body::<N, false, STORED>(words, scales, nb, x, y, rows, ahead)
}

/// [`panel_kernel`] for nf4 panels, whose codes `vpermb` looks up.
///
/// # Safety
/// As [`panel_kernel`]'s.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub unsafe fn panel_kernel_nf4<const N: usize, const STORED: bool>(
    words: *const u8,
    scales: *const u8,
    nb: usize,
    x: &Tokens,
    y: [*mut f32; N],
    rows: usize,
    ahead: (*const u8, usize),
) {
    panel_body::<N, true, STORED>(words, scales, nb, x, y, rows, ahead)
}

/// The body of [`panel_kernel`] and [`panel_kernel_nf4`].
#[inline(always)]
unsafe fn panel_body<const N: usize, const NF4: bool, const STORED: bool>(
    words: *const u8,
    scales: *const u8,
    nb: usize,
    x: &Tokens,
    y: [*mut f32; N],
    rows: usize,
    ahead: (*const u8, usize),
) {
    let per = panel_words(NF4);
    let table = if NF4 {
        nf4_table_u8x4()
    } else {
        _mm512_setzero_si512()
    };
    let wp = words as *const __m512i;
    let mut pos = 0;
    let xq = &x.codes;
    let (pf, lines) = ahead;
    let per_block = lines.div_ceil(nb.max(1));
    let mut asked = 0;
    // partial sums of the tree, by level: [token][half]
    let mut tree = [[[_mm512_setzero_ps(); 2]; N]; 4];
    for k in 0..CLASSES {
        let c = class_order(k);
        let mut acc = [[_mm512_setzero_ps(); 2]; N];
        for b in (c..nb).step_by(CLASSES) {
            for _ in 0..per_block.min(lines - asked) {
                prefetch_l2(pf.wrapping_add(64 * asked));
                asked += 1;
            }
            let mut s = [[_mm512_setzero_si512(); 2]; N];
            let mut odd = [[_mm512_setzero_si512(); 2]; N];
            if NF4 {
                for (s, corr) in s.iter_mut().zip(x.corr) {
                    let corr = _mm512_set1_epi32(*corr.add(b));
                    *s = [corr, corr];
                }
            }
            // the block's codes: nf4 in pair order, words 8..16 64 bytes on
            let base = if NF4 { q8_index(b, 0) } else { 2 * b * BLOCK };
            let wb = wp.add(2 * b * per);
            let sb = words.add(pos * 32 * BLOCK / if NF4 { 2 } else { 1 });
            // word `w` of the block, two vectors of sixteen rows: int8 as stored (widened)
            // or packed; nf4 packed (stored nf4 words come in pairs, below)
            macro_rules! load {
                ($w:expr) => {{
                    let w = $w;
                    if STORED {
                        let p = sb as *const __m256i;
                        (
                            _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.add(2 * w))),
                            _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.add(2 * w + 1))),
                        )
                    } else {
                        (
                            _mm512_loadu_si512(wb.add(2 * w)),
                            _mm512_loadu_si512(wb.add(2 * w + 1)),
                        )
                    }
                }};
            }
            // word `w`'s weights `(w0, w1)` against every token, into `s`
            macro_rules! word {
                ($ws:expr, $w:expr, $s:ident) => {{
                    let ((w0, w1), w) = ($ws, $w);
                    let at = base + 4 * if NF4 && w >= 8 { w + 8 } else { w };
                    for j in 0..N {
                        let xv = std::ptr::read_unaligned(xq[j].add(at) as *const i32);
                        let xv = _mm512_set1_epi32(xv);
                        $s[j] = if NF4 {
                            [
                                _mm512_dpbusd_epi32($s[j][0], w0, xv),
                                _mm512_dpbusd_epi32($s[j][1], w1, xv),
                            ]
                        } else {
                            [
                                _mm512_dpwssd_epi32($s[j][0], w0, xv),
                                _mm512_dpwssd_epi32($s[j][1], w1, xv),
                            ]
                        };
                    }
                }};
            }
            // under four tokens, odd words sum apart: twice the chains of dependent dot
            // instructions, and an exact integer sum either way
            if NF4 && STORED {
                // one 64-byte load a half: low nibbles are word j, high ones word j + 8
                let p = sb as *const __m512i;
                for j in 0..per / 2 {
                    let v0 = _mm512_loadu_si512(p.add(2 * j));
                    let v1 = _mm512_loadu_si512(p.add(2 * j + 1));
                    let lo = (
                        _mm512_permutexvar_epi8(v0, table),
                        _mm512_permutexvar_epi8(v1, table),
                    );
                    let hi = (
                        _mm512_permutexvar_epi8(_mm512_srli_epi16::<4>(v0), table),
                        _mm512_permutexvar_epi8(_mm512_srli_epi16::<4>(v1), table),
                    );
                    word!(lo, j, s);
                    if N < 4 {
                        word!(hi, j + per / 2, odd);
                    } else {
                        word!(hi, j + per / 2, s);
                    }
                }
            } else {
                for w in (0..per).step_by(2) {
                    word!(load!(w), w, s);
                    if N < 4 {
                        word!(load!(w + 1), w + 1, odd);
                    } else {
                        word!(load!(w + 1), w + 1, s);
                    }
                }
            }
            if N < 4 {
                for (s, odd) in s.iter_mut().zip(&odd) {
                    *s = [0, 1].map(|h| _mm512_add_epi32(s[h], odd[h]));
                }
            }
            let at = if STORED { pos } else { b };
            pos += 1;
            let ws = if NF4 && STORED {
                // a bf16 is the top half of its f32
                let p = (scales as *const u16).add(at * 32) as *const __m256i;
                let (s0, s1) = (_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1)));
                [
                    ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(s0))),
                    ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(s1))),
                ]
            } else {
                let p = (scales as *const f32).add(at * 32);
                [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))]
            };
            for j in 0..N {
                let xs = _mm512_set1_ps(*x.scale[j].add(b));
                for h in 0..2 {
                    let p = _mm512_mul_ps(_mm512_cvtepi32_ps(s[j][h]), _mm512_mul_ps(ws[h], xs));
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

/// [`crate::backend::cpu::scalar::quantize_token`] on AVX-512: the same codes (for finite `x`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn quantize_token_avx512(x: &[f32], act: Act, unit: f32, out: TokenCodes) {
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
/// [`crate::backend::cpu::scalar::quant_dot`]'s order: integer sums `v`, as f32, times `ws[b] * xs[b]`,
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
