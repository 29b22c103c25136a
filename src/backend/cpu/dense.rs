//! f32, f16 and bf16 weights against f32 activations: one stored row dotted with each
//! token (one token, bound by memory), sixteen narrow rows at a time, and four rows by four
//! tokens (sequences, bound by arithmetic). On one instruction set every kernel sums a
//! (row, token) pair in the same order, so a token's result does not depend on how many
//! tokens share the call.

use super::arch::prefetch_l1;
#[cfg(target_arch = "x86_64")]
use super::arch::x86::dense as x86;
use super::shared::{with_scratch, SharedMut};
use super::tuning::TOKENS_PER_BLOCK;
use crate::isa::Isa;
use crate::tensor::{Data, Matrix};
use std::cell::RefCell;
use std::ops::Range;
use wide::f32x8;

thread_local! {
    /// Weight rows converted to f32 (the portable one-token path and the tiles).
    static ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `a . b` over `[n]`, eight lanes with a scalar tail (the portable kernel).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len() / 8 * 8;
    let (mut acc0, mut acc1) = (f32x8::ZERO, f32x8::ZERO);
    let mut i = 0;
    while i + 16 <= n {
        let a0 = f32x8::from(<[f32; 8]>::try_from(&a[i..i + 8]).unwrap());
        let b0 = f32x8::from(<[f32; 8]>::try_from(&b[i..i + 8]).unwrap());
        let a1 = f32x8::from(<[f32; 8]>::try_from(&a[i + 8..i + 16]).unwrap());
        let b1 = f32x8::from(<[f32; 8]>::try_from(&b[i + 8..i + 16]).unwrap());
        acc0 = a0.mul_add(b0, acc0);
        acc1 = a1.mul_add(b1, acc1);
        i += 16;
    }
    if i < n {
        let a0 = f32x8::from(<[f32; 8]>::try_from(&a[i..i + 8]).unwrap());
        let b0 = f32x8::from(<[f32; 8]>::try_from(&b[i..i + 8]).unwrap());
        acc0 = a0.mul_add(b0, acc0);
    }
    let mut s = (acc0 + acc1).reduce_add();
    for j in n..a.len() {
        s += a[j] * b[j];
    }
    s
}

/// `w . x` for f32 vectors on `isa`.
#[inline]
fn dot_f32(isa: Isa, w: &[f32], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `isa` was detected on this CPU (Isa::detect).
        match isa {
            Isa::Avx512 => return unsafe { x86::dot_f32_avx512(w, x) },
            Isa::Avx2 => return unsafe { x86::dot_f32_avx2(w, x) },
            Isa::Portable => {}
        }
    }
    let _ = isa;
    dot(w, x)
}

/// Stored row `r` of `w` dotted with `x`, converting in registers; `buf [cols]` is scratch
/// for the portable path.
#[inline]
fn dot_row(isa: Isa, w: &Matrix, r: usize, x: &[f32], buf: &mut [f32]) -> f32 {
    let range = r * w.cols..(r + 1) * w.cols;
    #[cfg(target_arch = "x86_64")]
    {
        use x86::*;
        // SAFETY: `isa` was detected on this CPU (Isa::detect).
        unsafe {
            match (&w.data, isa) {
                (Data::F32(b), Isa::Avx512) => return dot_f32_avx512(&b[range], x),
                (Data::BF16(b), Isa::Avx512) => return dot_bf16_avx512(&b[range], x),
                (Data::F16(b), Isa::Avx512) => return dot_f16_avx512(&b[range], x),
                (Data::F32(b), Isa::Avx2) => return dot_f32_avx2(&b[range], x),
                (Data::BF16(b), Isa::Avx2) => return dot_bf16_avx2(&b[range], x),
                (Data::F16(b), Isa::Avx2) => return dot_f16_avx2(&b[range], x),
                _ => {}
            }
        }
    }
    match &w.data {
        Data::F32(b) => dot_f32(isa, &b[range], x),
        _ => {
            // The portable path: convert into L1, then the same f32 dot as the tiles use.
            w.row_f32(r, buf);
            dot_f32(isa, buf, x)
        }
    }
}

/// `out[r][t] = w[r] . x[t]` for four rows and four tokens.
#[inline]
fn tile4x4(isa: Isa, w: [&[f32]; 4], x: [&[f32]; 4], out: &mut [[f32; 4]; 4]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `isa` was detected on this CPU (Isa::detect).
        match isa {
            Isa::Avx512 => return unsafe { x86::tile4x4_avx512(w, x, out) },
            Isa::Avx2 => return unsafe { x86::tile4x4_avx2(w, x, out) },
            Isa::Portable => {}
        }
    }
    for r in 0..4 {
        for t in 0..4 {
            out[r][t] = dot(w[r], x[t]);
        }
    }
}

/// Touch the start of row `r` of `w` ahead of use: a stored row of a wide matrix is a
/// page of the file mapping, and hardware prefetchers stop at page boundaries.
#[inline]
pub fn prefetch_row(w: &Matrix, r: usize) {
    if r < w.rows {
        let p = match &w.data {
            Data::F32(b) => b[r * w.cols..].as_ptr() as *const i8,
            Data::F16(b) => b[r * w.cols..].as_ptr() as *const i8,
            Data::BF16(b) => b[r * w.cols..].as_ptr() as *const i8,
            Data::Q8(q) | Data::Q8Panels(q) => q.qs[r * w.cols..].as_ptr(),
            Data::Nf4(q) | Data::Nf4Panels(q) => q.packed[r * w.cols / 2..].as_ptr() as *const i8,
        };
        prefetch_l1(p);
    }
}

/// Where the stored bytes of rows `r0..r1` of `w` start, and how many there are (none
/// past the last row; scales left out).
pub fn stored_span(w: &Matrix, r0: usize, r1: usize) -> (*const u8, usize) {
    let (r0, r1) = (r0.min(w.rows), r1.min(w.rows));
    let c = w.cols;
    match &w.data {
        Data::F32(b) => (b[r0 * c..].as_ptr() as *const u8, (r1 - r0) * c * 4),
        Data::F16(b) => (b[r0 * c..].as_ptr() as *const u8, (r1 - r0) * c * 2),
        Data::BF16(b) => (b[r0 * c..].as_ptr() as *const u8, (r1 - r0) * c * 2),
        Data::Q8(q) | Data::Q8Panels(q) => (q.qs[r0 * c..].as_ptr() as *const u8, (r1 - r0) * c),
        Data::Nf4(q) | Data::Nf4Panels(q) => (q.packed[r0 * c / 2..].as_ptr(), (r1 - r0) * c / 2),
    }
}

/// Rows `rows` of `y [t, out] = x [t, in] . W^T`, each stored row dotted with each token
/// ([`super::plan::Kernel::Dots`]).
pub fn dot_rows(isa: Isa, w: &Matrix, rows: Range<usize>, x: &[f32], t: usize, y: SharedMut) {
    let (out, inp) = (w.rows, w.cols);
    with_scratch(&ROWS, |buf| {
        buf.resize(inp, 0.0);
        for o in rows {
            prefetch_row(w, o + 2);
            for ti in 0..t {
                let v = dot_row(isa, w, o, &x[ti * inp..(ti + 1) * inp], buf);
                // SAFETY: element (ti, o) is written by the task owning row o only.
                unsafe { y.write(ti * out + o, v) };
            }
        }
    });
}

/// Rows `rows` of `y [t, out] = x [t, in] . W^T` sixteen at a time, as many as make whole
/// groups, for a matrix at most [`super::tuning::NARROW`] wide on AVX-512
/// ([`super::plan::Kernel::Narrow16`]); returns the rows left for [`dot_rows`].
pub fn narrow_rows(
    w: &Matrix,
    rows: Range<usize>,
    x: &[f32],
    t: usize,
    y: SharedMut,
) -> Range<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        let (out, inp) = (w.rows, w.cols);
        let whole = rows.start..rows.start + rows.len() / 16 * 16;
        let mut sums = [0.0f32; 16];
        for r0 in whole.clone().step_by(16) {
            let span = r0 * inp..(r0 + 16) * inp;
            for ti in 0..t {
                let xt = &x[ti * inp..(ti + 1) * inp];
                // SAFETY: the plan picks this kernel only on AVX-512 (Isa::detect).
                unsafe {
                    match &w.data {
                        Data::F32(b) => x86::rows16_avx512(&b[span.clone()], xt, &mut sums),
                        Data::F16(b) => x86::rows16_avx512(&b[span.clone()], xt, &mut sums),
                        Data::BF16(b) => x86::rows16_avx512(&b[span.clone()], xt, &mut sums),
                        _ => unreachable!("narrow_rows: {:?}", w.dtype()),
                    }
                }
                for (k, &v) in sums.iter().enumerate() {
                    // SAFETY: elements (ti, r0..r0 + 16) are written by the task owning them.
                    unsafe { y.write(ti * out + r0 + k, v) };
                }
            }
        }
        whole.end..rows.end
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, x, t, y);
        rows
    }
}

/// Rows `rows` of `y [t, out] = x [t, in] . W^T`, the task's rows converted to f32 once
/// (the stored rows themselves when f32), then tokens in blocks that stay in L2 while every
/// group of four rows passes over them ([`super::plan::Kernel::Tiles`]).
pub fn tile_rows(isa: Isa, w: &Matrix, rows: Range<usize>, x: &[f32], t: usize, y: SharedMut) {
    let (out, inp) = (w.rows, w.cols);
    with_scratch(&ROWS, |conv| {
        let n_rows = rows.len();
        let f32_rows: Option<&[f32]> = match &w.data {
            Data::F32(b) => Some(&b[rows.start * inp..rows.end * inp]),
            _ => None,
        };
        let all_rows: &[f32] = match f32_rows {
            Some(r) => r,
            None => {
                conv.resize(n_rows * inp, 0.0);
                for (k, row) in conv.chunks_mut(inp).enumerate() {
                    w.row_f32(rows.start + k, row);
                }
                conv
            }
        };
        let xr = |ti: usize| &x[ti * inp..(ti + 1) * inp];
        tiled(
            rows,
            t,
            out,
            y,
            |k| &all_rows[k * inp..(k + 1) * inp],
            |wr, ti, acc| tile4x4(isa, wr, std::array::from_fn(|j| xr(ti + j)), acc),
            |wrow, ti| dot_f32(isa, wrow, xr(ti)),
        );
    });
}

/// As [`tile_rows`] for bf16 and f16 rows on AVX-512, widened in registers: half the bytes
/// through the caches of a converted copy, and no conversion pass
/// ([`super::plan::Kernel::StoredTiles`]). Tokens left over go through the one-token dot of
/// the same type, which sums a pair the same way.
pub fn stored_tile_rows(w: &Matrix, rows: Range<usize>, x: &[f32], t: usize, y: SharedMut) {
    #[cfg(target_arch = "x86_64")]
    match &w.data {
        Data::BF16(b) => tiled_stored(w, b, x86::dot_bf16_avx512, rows, x, t, y),
        Data::F16(b) => tiled_stored(w, b, x86::dot_f16_avx512, rows, x, t, y),
        _ => unreachable!("stored_tile_rows: {:?}", w.dtype()),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "stored tiles without AVX-512 ({:?})",
        (w.dtype(), rows, x.len(), t, y.ptr())
    )
}

#[cfg(target_arch = "x86_64")]
fn tiled_stored<W: x86::Wide512>(
    w: &Matrix,
    data: &[W],
    dot: unsafe fn(&[W], &[f32]) -> f32,
    rows: Range<usize>,
    x: &[f32],
    t: usize,
    y: SharedMut,
) {
    let (out, inp) = (w.rows, w.cols);
    let (start, xr) = (rows.start, |ti: usize| &x[ti * inp..(ti + 1) * inp]);
    let row = |k: usize| &data[(start + k) * inp..(start + k + 1) * inp];
    tiled(
        rows,
        t,
        out,
        y,
        row,
        // SAFETY (both kernels): the plan picks this kernel on AVX-512 only (Isa::detect).
        |wr, ti, acc| unsafe { x86::tile4x4_avx512(wr, std::array::from_fn(|j| xr(ti + j)), acc) },
        |wrow, ti| unsafe { dot(wrow, xr(ti)) },
    );
}

/// The sequence loop: tokens in blocks of [`TOKENS_PER_BLOCK`], the task's rows four at a
/// time against four tokens at a time (`tile(rows, first token, out)`), the tokens left
/// over one at a time (`dot(row, token)`); `row(k)` is the task's row `k`.
pub fn tiled<R: Copy>(
    rows: Range<usize>,
    t: usize,
    out: usize,
    y: SharedMut,
    row: impl Fn(usize) -> R,
    tile: impl Fn([R; 4], usize, &mut [[f32; 4]; 4]),
    dot: impl Fn(R, usize) -> f32,
) {
    let n_rows = rows.len();
    let mut acc = [[0.0f32; 4]; 4];
    for t0 in (0..t).step_by(TOKENS_PER_BLOCK) {
        let t1 = (t0 + TOKENS_PER_BLOCK).min(t);
        for g in (0..n_rows).step_by(4) {
            let n = (n_rows - g).min(4);
            let wr: [R; 4] = std::array::from_fn(|k| row(g + k.min(n - 1)));
            let mut ti = t0;
            while ti + 4 <= t1 {
                tile(wr, ti, &mut acc);
                for (k, r) in acc.iter().enumerate().take(n) {
                    for (j, v) in r.iter().enumerate() {
                        // SAFETY: element (ti + j, row) is written by the task owning the row.
                        unsafe { y.write((ti + j) * out + rows.start + g + k, *v) };
                    }
                }
                ti += 4;
            }
            for tt in ti..t1 {
                for (k, wrow) in wr.iter().enumerate().take(n) {
                    // SAFETY: as above.
                    unsafe { y.write(tt * out + rows.start + g + k, dot(*wrow, tt)) };
                }
            }
        }
    }
}
