//! CPU backend: `wide` SIMD kernels threaded with rayon, each beside a scalar twin
//! (`*_scalar`) that the tests hold it to.
//!
//! Threads split output rows (matmul) or heads (wkv); every output element is computed by
//! one thread in a fixed order, so results do not depend on the thread count.

pub mod qdot;
pub mod simd;

use super::{Backend, MatJob, Precision, Then};
use crate::tensor::quant::{BLOCK, NF4_I8};
use crate::tensor::{Data, Matrix};
use half::bf16;
use qdot::{Act, Panel, QActs, QRow};
use rayon::prelude::*;
pub use simd::Isa;
use std::cell::RefCell;
use std::thread::LocalKey;
use wide::f32x8;

/// The CPU backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu {
    /// How sequence products round their activations.
    pub precision: Precision,
}

/// Rows of `W [rows, cols]` one task multiplies: at least 16, large enough to amortise the
/// task, small enough to balance a 2048-row matrix over many cores. One token: as many rows
/// as make 8192 weights (the LoRA factors, 32 or 64 wide, take hundreds). Several: as many
/// as make 128 Ki weights, 512 KiB once converted to f32, so that each block of tokens
/// brought into L2 meets more rows (64 rows of width 2048 made prompts 8 % faster than 16),
/// but no more than an eighth of the rows: a narrow LoRA factor would otherwise be one task,
/// and its [`MatJob::then`] (a mix, or the decays' two `exp`s over every token) would run
/// on one thread. Panel kernels: whole panels of `panel` rows.
fn rows_per_task(rows: usize, cols: usize, t: usize, panel: usize) -> usize {
    let weights = if t < 4 { 8192 } else { 128 * 1024 };
    let per = (weights / cols.max(1)).min(rows.div_ceil(8));
    per.max(16).next_multiple_of(panel)
}

/// The most products one [`Backend::matmuls`] call runs together.
const MAX_JOBS: usize = 8;

/// Tokens multiplied against a task's rows at a time: 64 tokens of width 2048 are 512 KiB
/// of activations, which stay in L2 while every row group passes over them.
const TOKENS_PER_BLOCK: usize = 64;

thread_local! {
    /// Activations rounded to integers, one set per quantized product of the call.
    static ACTS: RefCell<Vec<QActs>> = RefCell::default();
    /// Weight rows converted to f32 (the sequence path, and the portable one-token path).
    static ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Activations rounded to bf16, `[t, x_stride(in)]` per product of the call
    /// ([`Precision::Bf16`]).
    static XBF: RefCell<Vec<Vec<bf16>>> = RefCell::default();
    /// A panel of weight rows packed for the bf16 kernel ([`Precision::Bf16`]).
    static PANEL: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Rows of an int8 or nf4 matrix packed for the sequence kernel.
    static QPANEL: RefCell<Panel> = RefCell::default();
    /// Rows of a panel as bf16, for weights not stored as bf16.
    static BROWS: RefCell<Vec<bf16>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on this thread's reusable `key`, so that no token allocates; on a fresh value
/// if `key` is already in use further up this thread's stack.
fn with_scratch<T: Default + 'static, R>(
    key: &'static LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => f(&mut v),
        Err(_) => f(&mut T::default()),
    })
}

/// A pointer that may be shared between threads writing disjoint elements.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: used only for writes to disjoint indices, one writer per index (see `matmul`).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Write `v` at element `i`.
    ///
    /// # Safety
    /// `i` is in bounds and no other thread writes element `i`.
    #[inline]
    unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }

    /// Elements `i..i + n` as a slice.
    ///
    /// # Safety
    /// They are in bounds and no other thread touches them while the slice lives.
    #[inline]
    unsafe fn run<'a>(self, i: usize, n: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(i), n)
    }
}

/// `a . b` over `[n]`, eight lanes with a scalar tail.
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

/// Scalar twin of [`dot`].
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Scalar twin of [`Backend::matmul`]: `W [out, in]`, `x [t, in]` -> `y [t, out]`.
pub fn matmul_scalar(w: &Matrix, x: &[f32], t: usize, y: &mut [f32]) {
    let wf = w.to_f32();
    let (out, inp) = (w.rows, w.cols);
    for ti in 0..t {
        for o in 0..out {
            y[ti * out + o] = dot_scalar(&wf[o * inp..(o + 1) * inp], &x[ti * inp..(ti + 1) * inp]);
        }
    }
}

/// Scalar twin of [`Backend::layer_norm`].
pub fn layer_norm_scalar(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let d = weight.len();
    for row in x.chunks_mut(d) {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// `sum(f(x))` in sixteen lanes (element `i` into lane `i % 16`), then the lanes in halves:
/// sixteen independent chains the compiler vectorises, in one order on every instruction
/// set. A sum of 2048 as one chain of dependent adds took 1.7 us, this 0.11 us (the norms
/// take six sums a layer and token).
#[inline]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let (chunks, tail) = x.as_chunks::<16>();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += f(v);
    }
    let mut w = acc.len();
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0]
}

/// Normalise `x [n]` in place (no affine part), two passes in f32.
#[inline]
fn normalize(x: &mut [f32], eps: f32) {
    let n = x.len() as f32;
    let mean = lane_sum(x, |v| v) / n;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for v in x.iter_mut() {
        *v = (*v - mean) * inv;
    }
}

/// Scalar twin of [`Backend::wkv`].
#[allow(clippy::too_many_arguments)]
pub fn wkv_scalar(
    heads: usize,
    r: &[f32],
    k: &[f32],
    v: &[f32],
    w: &[f32],
    u: &[f32],
    state: &mut [f32],
    out: &mut [f32],
) {
    let d = u.len();
    let s = d / heads;
    let t = r.len() / d;
    for ti in 0..t {
        for h in 0..heads {
            let st = &mut state[h * s * s..(h + 1) * s * s];
            for j in 0..s {
                let mut acc = 0.0;
                for i in 0..s {
                    let c = ti * d + h * s + i;
                    let a = k[c] * v[ti * d + h * s + j];
                    acc += r[c] * (u[h * s + i] * a + st[i * s + j]);
                    st[i * s + j] = a + w[c] * st[i * s + j];
                }
                out[ti * d + h * s + j] = acc;
            }
        }
    }
}

/// One head's inputs to the recurrence: `r, k, v, w [t, d]`, `u [d]`, the head's channels
/// `c0..c0 + s`.
#[derive(Clone, Copy)]
struct WkvHead<'a> {
    d: usize,
    c0: usize,
    s: usize,
    r: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    w: &'a [f32],
    u: &'a [f32],
}

/// One head of the recurrence over all `t` tokens, vectorised over the value index `j`.
/// `st [S, S]`, `acc [S]` scratch, `out` rows of stride `d` from this head's channel `c0`.
/// The bonus term is summed apart, `out[j] = (sum_i r[i] u[i] k[i]) v[j] + sum_i r[i]
/// s[i][j]`: five operations an element instead of seven. Plain multiplies and adds (no
/// fused ones), so every instruction set gives the same bits.
#[inline(always)]
fn wkv_head_body(h: WkvHead, st: &mut [f32], acc: &mut [f32], out: SharedMut) {
    // Heads of 64 (every released RWKV-6) with the size a constant and the accumulators a
    // local array, which the compiler keeps in registers: the recurrence took 3.5 % of a
    // prompt's CPU time with them in memory, 2.6 % like this.
    if h.s == 64 {
        return wkv_head_loop(WkvHead { s: 64, ..h }, st, &mut [0.0; 64], out);
    }
    wkv_head_loop(h, st, acc, out)
}

#[inline(always)]
fn wkv_head_loop(h: WkvHead, st: &mut [f32], acc: &mut [f32], out: SharedMut) {
    let WkvHead {
        d,
        c0,
        s,
        r,
        k,
        v,
        w,
        u,
    } = h;
    let t = r.len() / d;
    for ti in 0..t {
        let row = ti * d + c0;
        let vj = &v[row..row + s];
        acc.iter_mut().for_each(|a| *a = 0.0);
        let mut bonus = 0.0f32;
        for i in 0..s {
            let (ri, ki, wi) = (r[row + i], k[row + i], w[row + i]);
            bonus += ri * u[c0 + i] * ki;
            let srow = &mut st[i * s..(i + 1) * s];
            for ((sij, &vj), a) in srow.iter_mut().zip(vj).zip(acc.iter_mut()) {
                *a += ri * *sij;
                *sij = ki * vj + wi * *sij;
            }
        }
        for (j, (a, &vj)) in acc.iter().zip(vj).enumerate() {
            // SAFETY: this head alone writes channels c0..c0+s of every row.
            unsafe { out.write(row + j, a + bonus * vj) };
        }
    }
}

/// [`wkv_head_body`] compiled for AVX-512 (the portable build is SSE2).
///
/// # Safety
/// AVX-512F on this CPU.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wkv_head_avx512(h: WkvHead, st: &mut [f32], acc: &mut [f32], out: SharedMut) {
    wkv_head_body(h, st, acc, out)
}

/// [`wkv_head_body`] compiled for AVX2.
///
/// # Safety
/// AVX2 on this CPU.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn wkv_head_avx2(h: WkvHead, st: &mut [f32], acc: &mut [f32], out: SharedMut) {
    wkv_head_body(h, st, acc, out)
}

/// One head of [`Backend::wkv`] on `isa`.
fn wkv_head(isa: Isa, h: WkvHead, st: &mut [f32], acc: &mut [f32], out: SharedMut) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `isa` was detected on this CPU (Isa::detect).
    unsafe {
        match isa {
            Isa::Avx512 => return wkv_head_avx512(h, st, acc, out),
            Isa::Avx2 => return wkv_head_avx2(h, st, acc, out),
            Isa::Portable => {}
        }
    }
    let _ = isa;
    wkv_head_body(h, st, acc, out)
}

/// `w . x` for f32 vectors on `isa`.
#[inline]
fn dot_f32(isa: Isa, w: &[f32], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `isa` was detected on this CPU (Isa::detect).
        match isa {
            Isa::Avx512 => return unsafe { simd::x86::dot_f32_avx512(w, x) },
            Isa::Avx2 => return unsafe { simd::x86::dot_f32_avx2(w, x) },
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
        use simd::x86::*;
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
            // The portable path: convert into L1, then the same f32 dot as the sequence
            // path's tiles use.
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
            Isa::Avx512 => return unsafe { simd::x86::tile4x4_avx512(w, x, out) },
            Isa::Avx2 => return unsafe { simd::x86::tile4x4_avx2(w, x, out) },
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
fn prefetch_row(w: &Matrix, r: usize) {
    #[cfg(target_arch = "x86_64")]
    if r < w.rows {
        let p = match &w.data {
            Data::F32(b) => b[r * w.cols..].as_ptr() as *const i8,
            Data::F16(b) => b[r * w.cols..].as_ptr() as *const i8,
            Data::BF16(b) => b[r * w.cols..].as_ptr() as *const i8,
            Data::Q8(q) => q.qs[r * w.cols..].as_ptr(),
            Data::Nf4(q) => q.packed[r * w.cols / 2..].as_ptr() as *const i8,
        };
        // SAFETY: prefetching is a hint; the address is inside the row.
        unsafe { std::arch::x86_64::_mm_prefetch(p, std::arch::x86_64::_MM_HINT_T0) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (w, r);
}

/// Rows `rows` of `y [t, out] = x [t, in] . W^T` on `isa`. One token: each stored row is
/// dotted directly (bandwidth-bound). Several: four rows are converted to f32 once, then
/// multiplied with four tokens at a time (arithmetic-bound).
fn matmul_rows(
    isa: Isa,
    w: &Matrix,
    rows: std::ops::Range<usize>,
    x: &[f32],
    t: usize,
    y: SharedMut,
) {
    let (out, inp) = (w.rows, w.cols);
    if t < 4 {
        #[cfg(target_arch = "x86_64")]
        let rows = narrow_rows(isa, w, rows, x, t, y);
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
        return;
    }
    // AVX-512 tiles widen 16-bit rows in registers: half the bytes through the caches of
    // a converted copy, and no conversion pass.
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        use simd::x86::{dot_bf16_avx512, dot_f16_avx512};
        match &w.data {
            Data::BF16(b) => return tiled_stored(w, b, dot_bf16_avx512, rows, x, t, y),
            Data::F16(b) => return tiled_stored(w, b, dot_f16_avx512, rows, x, t, y),
            _ => {}
        }
    }
    // All of the task's rows as f32 (the stored rows themselves when f32), then tokens in
    // blocks that stay in L2 while every row group passes over them.
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

/// Rows `rows` of `y [t, out] = x [t, in] . W^T` from `data`, the stored rows of `w`,
/// on AVX-512: 4x4 tiles that widen the rows in registers, and `dot` (the
/// one-token kernel of the same type, which sums a pair the same way) for tokens left over.
#[cfg(target_arch = "x86_64")]
fn tiled_stored<W: simd::x86::Wide512>(
    w: &Matrix,
    data: &[W],
    dot: unsafe fn(&[W], &[f32]) -> f32,
    rows: std::ops::Range<usize>,
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
        // SAFETY (both kernels): the caller runs this on AVX-512 only (Isa::Avx512 was
        // detected on this CPU).
        |wr, ti, acc| unsafe {
            simd::x86::tile4x4_avx512(wr, std::array::from_fn(|j| xr(ti + j)), acc)
        },
        |wrow, ti| unsafe { dot(wrow, xr(ti)) },
    );
}

/// The sequence loop of f32, f16 and bf16 weights: tokens in blocks of [`TOKENS_PER_BLOCK`], the task's
/// rows four at a time against four tokens at a time (`tile(rows, first token, out)`), the
/// tokens left over one at a time (`dot(row, token)`); `row(k)` is the task's row `k`.
fn tiled<R: Copy>(
    rows: std::ops::Range<usize>,
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

/// The widest matrix whose one-token products go sixteen rows at a time
/// ([`simd::x86::rows16_avx512`]): the LoRA factors' 32 and 64.
#[cfg(target_arch = "x86_64")]
const NARROW: usize = 128;

/// For an f32, f16 or bf16 matrix at most [`NARROW`] wide (a multiple of 16) on AVX-512:
/// rows `rows` of `y [t, out] = x [t, in] . W^T` sixteen at a time, as many as make whole
/// groups; returns the rows left to do one by one (all of them for other matrices). In
/// generation these products read 22 MB a token at 15-17 GB/s, a row at a time.
#[cfg(target_arch = "x86_64")]
fn narrow_rows(
    isa: Isa,
    w: &Matrix,
    rows: std::ops::Range<usize>,
    x: &[f32],
    t: usize,
    y: SharedMut,
) -> std::ops::Range<usize> {
    use simd::x86::rows16_avx512;
    let (out, inp) = (w.rows, w.cols);
    let stored = matches!(w.data, Data::F32(_) | Data::F16(_) | Data::BF16(_));
    if isa != Isa::Avx512 || !stored || inp > NARROW || !inp.is_multiple_of(16) {
        return rows;
    }
    let whole = rows.start..rows.start + rows.len() / 16 * 16;
    let mut sums = [0.0f32; 16];
    for r0 in whole.clone().step_by(16) {
        let span = r0 * inp..(r0 + 16) * inp;
        for ti in 0..t {
            let xt = &x[ti * inp..(ti + 1) * inp];
            // SAFETY: AVX-512 was detected on this CPU (Isa::detect).
            unsafe {
                match &w.data {
                    Data::F32(b) => rows16_avx512(&b[span.clone()], xt, &mut sums),
                    Data::F16(b) => rows16_avx512(&b[span.clone()], xt, &mut sums),
                    Data::BF16(b) => rows16_avx512(&b[span.clone()], xt, &mut sums),
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

/// Rows `rows` of `y [t, out] = x [t, in] . W^T` with `x` rounded to bf16 ([`Precision::Bf16`],
/// AVX-512 BF16 only; `x [t, x_stride(in)]`, zeros past `in`): the rows 32 at a time,
/// packed into a panel (bf16 rows as stored; other formats, and odd widths, through bf16
/// copies), then multiplied with up to 12 tokens at a time by `vdpbf16ps`.
#[cfg(target_arch = "x86_64")]
fn matmul_rows_bh(w: &Matrix, rows: std::ops::Range<usize>, x: &[bf16], t: usize, y: SharedMut) {
    use simd::x86::{pack_panel_avx512, PANEL_ROWS, PANEL_TOKENS};
    let (out, inp) = (w.rows, w.cols);
    let pairs = inp.div_ceil(2);
    let xw = 2 * pairs;
    let (xp, xs_u32) = (x.as_ptr() as *const u32, x_stride(inp) / 2);
    with_scratch(&PANEL, |panel| {
        panel.resize(pairs * PANEL_ROWS, 0);
        for r0 in rows.clone().step_by(PANEL_ROWS) {
            let n = (rows.end - r0).min(PANEL_ROWS);
            let (base, stride) = match &w.data {
                Data::BF16(b) if inp.is_multiple_of(2) => (b[r0 * inp..].as_ptr(), inp),
                _ => with_scratch(&ROWS, |f| {
                    with_scratch(&BROWS, |brows| {
                        f.resize(inp, 0.0);
                        brows.resize(n * xw, bf16::ZERO);
                        for (k, row) in brows.chunks_exact_mut(xw).enumerate() {
                            // SAFETY: the caller checked AVX-512 BF16 on this CPU.
                            unsafe { row_bf16(w, r0 + k, f, &mut row[..inp]) };
                            row[inp..].fill(bf16::ZERO);
                        }
                        (brows.as_ptr(), xw)
                    })
                }),
            };
            // SAFETY: as above; the n rows of `stride` from `base` are in bounds (BROWS is
            // not touched again before the panel is packed).
            unsafe { pack_panel_avx512(base, stride, n, pairs, panel) };
            // The next panel's stored rows (most often this thread's next task's) are asked
            // for while the tokens keep the core busy, a line every few pairs of every call:
            // in 512-token prompts packing took 10-11 % of the kernel's time with no requests
            // or with bursts of them per call, 6.6 % spread out like this.
            let (next, len) = stored_span(w, r0 + PANEL_ROWS, r0 + 2 * PANEL_ROWS);
            let calls = t.div_ceil(PANEL_TOKENS);
            let per_call = len.div_ceil(64 * calls);
            for (c, t0) in (0..t).step_by(PANEL_TOKENS).enumerate() {
                let nt = (t - t0).min(PANEL_TOKENS);
                let from = (c * per_call).min(len.div_ceil(64));
                let lines = per_call.min(len.div_ceil(64) - from);
                let ahead = (next.wrapping_add(64 * from), lines);
                // SAFETY: token t0 + j's activations are `pairs` u32 from its row of `x`; its
                // outputs for rows r0..r0 + n are written by this task only.
                unsafe {
                    let xs = |j: usize| xp.add((t0 + j) * xs_u32);
                    let ys = |j: usize| y.0.add((t0 + j) * out + r0);
                    panel_tokens(nt, panel, pairs, xs, ys, n, ahead);
                }
            }
        }
    })
}

/// Row `r` of `w` rounded to bf16 into `out [cols]`: int8 and nf4 rows in one pass, others
/// through `f [cols]` in f32.
///
/// # Safety
/// The CPU has AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
unsafe fn row_bf16(w: &Matrix, r: usize, f: &mut [f32], out: &mut [bf16]) {
    use simd::x86::{nf4_row_bf16, q8_row_bf16, round_bf16_avx512};
    match &w.data {
        Data::Q8(_) | Data::Nf4(_) => match qrow(w, r) {
            QRow::Q8 { qs, scales } => q8_row_bf16(qs, scales, out),
            QRow::Nf4 { packed, scales } => nf4_row_bf16(packed, scales, out),
        },
        _ => {
            w.row_f32(r, f);
            round_bf16_avx512(f, out);
        }
    }
}

/// Where the stored bytes of rows `r0..r1` of `w` start, and how many there are (none
/// past the last row; scales left out).
fn stored_span(w: &Matrix, r0: usize, r1: usize) -> (*const u8, usize) {
    let (r0, r1) = (r0.min(w.rows), r1.min(w.rows));
    let c = w.cols;
    match &w.data {
        Data::F32(b) => (b[r0 * c..].as_ptr() as *const u8, (r1 - r0) * c * 4),
        Data::F16(b) => (b[r0 * c..].as_ptr() as *const u8, (r1 - r0) * c * 2),
        Data::BF16(b) => (b[r0 * c..].as_ptr() as *const u8, (r1 - r0) * c * 2),
        Data::Q8(q) => (q.qs[r0 * c..].as_ptr() as *const u8, (r1 - r0) * c),
        Data::Nf4(q) => (q.packed[r0 * c / 2..].as_ptr(), (r1 - r0) * c / 2),
    }
}

/// [`simd::x86::panel_kernel`] for `nt` (1 to 12) tokens.
///
/// # Safety
/// As the kernel's; AVX-512 BF16 on this CPU.
#[cfg(target_arch = "x86_64")]
unsafe fn panel_tokens(
    nt: usize,
    panel: &[u32],
    pairs: usize,
    xs: impl Fn(usize) -> *const u32,
    ys: impl Fn(usize) -> *mut f32,
    n: usize,
    ahead: (*const u8, usize),
) {
    macro_rules! k {
        ($($n:literal)*) => {
            match nt {
                $($n => simd::x86::panel_kernel::<$n>(
                    panel,
                    pairs,
                    std::array::from_fn(&xs),
                    std::array::from_fn(&ys),
                    n,
                    ahead,
                ),)*
                _ => unreachable!("panel_tokens: {nt} tokens"),
            }
        };
    }
    k!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// Whether this CPU has the bf16 products of [`Precision::Bf16`] (AVX-512 BF16, and the
/// AVX-512 instruction set in use); without them that precision is [`Precision::F32`].
pub fn bf16_products_here() -> bool {
    bf16_dot_on(Isa::detect())
}

/// Whether `isa` is AVX-512 on a CPU with AVX-512 BF16.
fn bf16_dot_on(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static BF16_DOT: OnceLock<bool> = OnceLock::new();
        isa == Isa::Avx512 && *BF16_DOT.get_or_init(simd::x86::has_bf16_dot)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// Whether `prec` makes this product of `t` tokens of `w` run on bf16 activations on `isa`:
/// a sequence product of 16-bit or int8 weights, on a CPU with AVX-512 BF16. nf4 weights
/// stay in integers where the CPU has the [`Panel`] kernel: `vpdpbusd` does twice the
/// products of `vdpbf16ps` (matrices of width 2048: 560-590 against 400 GFLOP/s), where
/// for int8, `vpdpwssd` does as many and its panels ran at 330-350.
fn bf16_product(isa: Isa, prec: Precision, w: &Matrix, t: usize) -> bool {
    let integers = matches!(w.data, Data::Nf4(_)) && Panel::runs(isa, true);
    prec == Precision::Bf16
        && t >= 4
        && !matches!(w.data, Data::F32(_))
        && !integers
        && bf16_dot_on(isa)
}

/// The rows a sequence kernel packs together for this product (1 where none does):
/// bf16 panels (`bh`), or the int8 and nf4 panels of [`Panel`].
fn panel_rows(isa: Isa, w: &Matrix, t: usize, bh: bool) -> usize {
    #[cfg(target_arch = "x86_64")]
    if bh {
        return simd::x86::PANEL_ROWS;
    }
    let _ = bh;
    if t >= 4 && code_unit(w).is_some() && Panel::runs(isa, matches!(w.data, Data::Nf4(_))) {
        qdot::PANEL_ROWS
    } else {
        1
    }
}

/// Stored row `r` of an int8 or nf4 matrix.
pub(crate) fn qrow(w: &Matrix, r: usize) -> QRow<'_> {
    qrows(w, r..r + 1)
}

/// Stored rows `rows` of an int8 or nf4 matrix, one after another.
pub(crate) fn qrows(w: &Matrix, rows: std::ops::Range<usize>) -> QRow<'_> {
    let nb = w.cols / BLOCK;
    let scales = rows.start * nb..rows.end * nb;
    match &w.data {
        Data::Q8(q) => QRow::Q8 {
            qs: &q.qs[rows.start * w.cols..rows.end * w.cols],
            scales: &q.scales[scales],
        },
        Data::Nf4(q) => QRow::Nf4 {
            packed: &q.packed[rows.start * w.cols / 2..rows.end * w.cols / 2],
            scales: &q.scales[scales],
        },
        _ => unreachable!("qrows: {:?} is not quantized", w.dtype()),
    }
}

/// Rows `rows` of `y [t, out] = x [t, in] . W^T` for an int8 or nf4 `W`, with `x` already
/// rounded ([`qdot`]): 32 rows at a time against up to eight tokens at a time ([`Panel`])
/// for four tokens or more where the CPU has the panel kernel, direct dots otherwise. Both
/// give the same sums.
fn matmul_rows_quant(
    isa: Isa,
    w: &Matrix,
    rows: std::ops::Range<usize>,
    x: &QActs,
    t: usize,
    y: SharedMut,
) {
    use qdot::{PANEL_ROWS, PANEL_TOKENS};
    let out = w.rows;
    if t < 4 || !Panel::runs(isa, matches!(w.data, Data::Nf4(_))) {
        for ti in 0..t {
            // SAFETY: elements (ti, rows) are written by the task owning the rows only.
            let run = unsafe { y.run(ti * out + rows.start, rows.len()) };
            qdot::dots(isa, qrows(w, rows.clone()), x.token(ti), run);
        }
        return;
    }
    with_scratch(&QPANEL, |panel| {
        for r0 in rows.clone().step_by(PANEL_ROWS) {
            let n = (rows.end - r0).min(PANEL_ROWS);
            let stored: [QRow; PANEL_ROWS] = std::array::from_fn(|k| qrow(w, r0 + k.min(n - 1)));
            panel.pack(isa, &stored[..n]);
            for t0 in (0..t).step_by(PANEL_TOKENS) {
                let nt = (t - t0).min(PANEL_TOKENS);
                // SAFETY: elements (t0 + j, r0..r0 + n) are written by the task owning
                // rows r0..r0 + n only.
                unsafe { panel.multiply(x, t0, nt, |j| y.0.add((t0 + j) * out + r0)) };
            }
        }
    })
}

/// For a quantized matrix: the value of one unit of its integer codes (int8 weights are
/// `q * s`, nf4 weights `NF4_I8[i] / 127 * s`), and how its activations are rounded.
fn code_unit(w: &Matrix) -> Option<(f32, Act)> {
    match w.data {
        Data::Q8(_) => Some((1.0, Act::I16)),
        Data::Nf4(_) => Some((1.0 / NF4_I8[15] as f32, Act::I8)),
        _ => None,
    }
}

/// [`Backend::matmul`] on a chosen instruction set and precision (tests and benchmarks
/// compare them).
pub fn matmul_with(isa: Isa, prec: Precision, w: &Matrix, x: &[f32], t: usize, y: &mut [f32]) {
    matmuls_with(isa, prec, t, &mut [MatJob::new(w, x, y)]);
}

/// [`Backend::matmuls`] on a chosen instruction set and precision: the row tasks of every
/// product in one parallel region.
pub fn matmuls_with(isa: Isa, prec: Precision, t: usize, jobs: &mut [MatJob<'_>]) {
    assert!(
        jobs.len() <= MAX_JOBS,
        "matmuls: more than {MAX_JOBS} products"
    );
    assert!(isa.runs_here(), "{isa:?} is not available on this CPU");
    let bh: [bool; MAX_JOBS] =
        std::array::from_fn(|i| jobs.get(i).is_some_and(|j| bf16_product(isa, prec, j.w, t)));
    let per: [usize; MAX_JOBS] = std::array::from_fn(|i| {
        jobs.get(i).map_or(1, |j| {
            rows_per_task(j.w.rows, j.w.cols, t, panel_rows(isa, j.w, t, bh[i]))
        })
    });
    let mut first_task = [0usize; MAX_JOBS + 1];
    let mut ys = [SharedMut(std::ptr::null_mut()); MAX_JOBS];
    for (i, j) in jobs.iter_mut().enumerate() {
        assert_eq!(j.x.len(), t * j.w.cols, "matmul: x is not [t, in]");
        assert_eq!(j.y.len(), t * j.w.rows, "matmul: y is not [t, out]");
        first_task[i + 1] = first_task[i] + j.w.rows.div_ceil(per[i]);
        ys[i] = SharedMut(j.y.as_mut_ptr());
    }
    let jobs = &*jobs;
    with_scratch(&ACTS, |acts| {
        with_scratch(&XBF, |xbf| {
            if acts.len() < jobs.len() {
                acts.resize_with(jobs.len(), QActs::default);
            }
            if xbf.len() < jobs.len() {
                xbf.resize_with(jobs.len(), Vec::new);
            }
            for (i, j) in jobs.iter().enumerate() {
                if bh[i] {
                    round_bf16(j.x, j.w.cols, &mut xbf[i]);
                } else if let Some((unit, act)) = code_unit(j.w) {
                    acts[i].quantize(isa, j.x, j.w.cols, unit, act);
                }
            }
            let (acts, xbf) = (&*acts, &*xbf);
            (0..first_task[jobs.len()])
                .into_par_iter()
                .for_each(|task| {
                    let i = first_task[1..=jobs.len()].partition_point(|&f| f <= task);
                    let w = jobs[i].w;
                    let r0 = (task - first_task[i]) * per[i];
                    let rows = r0..(r0 + per[i]).min(w.rows);
                    let y = ys[i];
                    match code_unit(w) {
                        #[cfg(target_arch = "x86_64")]
                        _ if bh[i] => matmul_rows_bh(w, rows.clone(), &xbf[i], t, y),
                        Some(_) => matmul_rows_quant(isa, w, rows.clone(), &acts[i], t, y),
                        None => matmul_rows(isa, w, rows.clone(), jobs[i].x, t, y),
                    }
                    if let Some(f) = jobs[i].then {
                        for ti in 0..t {
                            // SAFETY: the outputs (ti, rows) are this task's alone, written
                            // above, and in bounds (y is [t, out]).
                            let run = unsafe { y.run(ti * w.rows + rows.start, rows.len()) };
                            f(ti, rows.start, run);
                        }
                    }
                });
        })
    });
}

/// The row stride of activations rounded to bf16 for rows of `n`: even (the bf16 kernel
/// reads pairs), and off multiples of 2 KiB, where the twelve rows the kernel reads
/// together would share the eight ways of one L1 set (4 KiB rows, width 2048, ran 3 %
/// slower over three paired runs).
fn x_stride(n: usize) -> usize {
    let w = n.next_multiple_of(2);
    if (2 * w).is_multiple_of(2048) {
        w + 32
    } else {
        w
    }
}

/// `x [t, n]` rounded to bf16 into `out [t, x_stride(n)]`, zeros past `n`; tokens in
/// parallel (AVX-512 BF16 only).
fn round_bf16(x: &[f32], n: usize, out: &mut Vec<bf16>) {
    let w = x_stride(n);
    out.resize(x.len() / n * w, bf16::ZERO);
    #[cfg(target_arch = "x86_64")]
    out.par_chunks_mut(w * 16)
        .zip(x.par_chunks(n * 16))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_exact_mut(w).zip(x.chunks_exact(n)) {
                // SAFETY: only called for products that bf16_product admitted.
                unsafe { simd::x86::round_bf16_avx512(x, &mut o[..n]) };
                o[n..].fill(bf16::ZERO);
            }
        });
}

/// Scalar twin of [`matmul_with`] at [`Precision::Bf16`] for sequence products: weights
/// and activations rounded to bf16, then summed a pair of columns at a time in f32.
pub fn matmul_bf16_scalar(w: &Matrix, x: &[f32], t: usize, y: &mut [f32]) {
    let (out, inp) = (w.rows, w.cols);
    let round = |v: &[f32]| -> Vec<f32> { v.iter().map(|&v| bf16::from_f32(v).to_f32()).collect() };
    let mut row = vec![0.0; inp];
    for o in 0..out {
        w.row_f32(o, &mut row);
        let wr = round(&row);
        for ti in 0..t {
            let xr = round(&x[ti * inp..(ti + 1) * inp]);
            let mut acc = 0.0f32;
            for (a, b) in wr.chunks(2).zip(xr.chunks(2)) {
                acc += a.iter().zip(b).map(|(a, b)| a * b).sum::<f32>();
            }
            y[ti * out + o] = acc;
        }
    }
}

/// Scalar twin of [`matmul_with`] for int8 and nf4 matrices: activations rounded as there,
/// then [`qdot::dot_scalar`].
pub fn matmul_quant_scalar(w: &Matrix, x: &[f32], t: usize, y: &mut [f32]) {
    let (unit, act) = code_unit(w).expect("matmul_quant_scalar: the matrix is not quantized");
    let mut acts = QActs::default();
    acts.quantize(Isa::Portable, x, w.cols, unit, act);
    for ti in 0..t {
        for o in 0..w.rows {
            y[ti * w.rows + o] = qdot::dot_scalar(qrow(w, o), acts.token(ti));
        }
    }
}

impl Backend for Cpu {
    fn matmul(&self, w: &Matrix, x: &[f32], t: usize, y: &mut [f32]) {
        matmul_with(Isa::detect(), self.precision, w, x, t, y)
    }

    fn matmuls(&self, t: usize, jobs: &mut [MatJob<'_>]) {
        matmuls_with(Isa::detect(), self.precision, t, jobs)
    }

    fn layer_norm(&self, x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
        let norm = |row: &mut [f32]| {
            normalize(row, eps);
            for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
                *v = *v * w + b;
            }
        };
        // A token's row on this thread; a prompt's rows in parallel.
        if x.len() == weight.len() {
            norm(x)
        } else {
            x.par_chunks_mut(weight.len()).for_each(norm)
        }
    }

    fn group_norm(&self, x: &mut [f32], heads: usize, weight: &[f32], bias: &[f32], eps: f32) {
        let d = weight.len();
        let s = d / heads;
        let norm = |row: &mut [f32]| {
            for g in row.chunks_mut(s) {
                normalize(g, eps);
            }
            for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
                *v = *v * w + b;
            }
        };
        if x.len() == d {
            norm(x)
        } else {
            x.par_chunks_mut(d).for_each(norm)
        }
    }

    fn wkv(
        &self,
        heads: usize,
        r: &[f32],
        k: &[f32],
        v: &[f32],
        w: &[f32],
        u: &[f32],
        state: &mut [f32],
        out: &mut [f32],
        then: Option<Then<'_>>,
    ) {
        wkv_with(Isa::detect(), heads, r, k, v, w, u, state, out, then)
    }
}

/// [`Backend::wkv`] on a chosen instruction set (every one gives the same bits): heads in
/// parallel, each followed by `then` over its outputs.
#[allow(clippy::too_many_arguments)]
pub fn wkv_with(
    isa: Isa,
    heads: usize,
    r: &[f32],
    k: &[f32],
    v: &[f32],
    w: &[f32],
    u: &[f32],
    state: &mut [f32],
    out: &mut [f32],
    then: Option<Then<'_>>,
) {
    assert!(isa.runs_here(), "{isa:?} is not available on this CPU");
    let d = u.len();
    let s = d / heads;
    let t = r.len() / d.max(1);
    assert_eq!(state.len(), heads * s * s, "wkv: state is not [H, S, S]");
    assert_eq!(out.len(), r.len(), "wkv: out is not [t, D]");
    assert_eq!(w.len(), r.len(), "wkv: w is not [t, D]");
    let op = SharedMut(out.as_mut_ptr());
    state.par_chunks_mut(s * s).enumerate().for_each(|(h, st)| {
        let c0 = h * s;
        with_scratch(&ROWS, |acc| {
            acc.resize(s, 0.0);
            let head = WkvHead {
                d,
                c0,
                s,
                r,
                k,
                v,
                w,
                u,
            };
            wkv_head(isa, head, st, &mut acc[..s], op)
        });
        if let Some(f) = then {
            for ti in 0..t {
                // SAFETY: this head alone wrote channels c0..c0 + s of every row.
                f(ti, c0, unsafe { op.run(ti * d + c0, s) });
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{Buf, DType, Data};
    use half::{bf16, f16};

    /// Deterministic values in [-1, 1).
    pub(super) fn vals(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "at {i}: {x} vs {y}");
        }
    }

    #[test]
    fn dot_matches_scalar_on_odd_lengths() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 100, 257] {
            let (a, b) = (vals(n, 1), vals(n, 2));
            let (x, y) = (dot(&a, &b), dot_scalar(&a, &b));
            assert!((x - y).abs() < 1e-4, "n={n}: {x} vs {y}");
        }
    }

    fn mats(out: usize, inp: usize, seed: u32) -> [Matrix; 3] {
        let wv = vals(out * inp, seed);
        [
            Matrix::from_f32(out, inp, wv.clone()),
            Matrix {
                rows: out,
                cols: inp,
                data: Data::F16(Buf::Owned(wv.iter().map(|&v| f16::from_f32(v)).collect())),
            },
            Matrix {
                rows: out,
                cols: inp,
                data: Data::BF16(Buf::Owned(wv.iter().map(|&v| bf16::from_f32(v)).collect())),
            },
        ]
    }

    /// Every instruction set the CPU has, every dtype, sizes that are not multiples of the
    /// vector width, one token (direct dots) and several (4x4 tiles plus remainders).
    #[test]
    fn matmul_matches_scalar_for_every_isa_and_dtype() {
        // (37, 32) and (40, 64): narrow, sixteen rows at a time and the rest one by one
        for (out, inp) in [(37, 45), (5, 16), (9, 257), (64, 33), (37, 32), (40, 64)] {
            for m in &mats(out, inp, 3) {
                for t in [1, 3, 4, 5, 11] {
                    let x = vals(t * inp, 4);
                    let mut want = vec![0.0; t * out];
                    matmul_scalar(m, &x, t, &mut want);
                    for isa in Isa::available() {
                        let mut y = vec![0.0; t * out];
                        matmul_with(isa, Precision::F32, m, &x, t, &mut y);
                        close(&y, &want, 1e-5);
                    }
                }
            }
        }
    }

    /// Sequence products at bf16 precision: every stored format against the scalar twin, on
    /// widths that are odd or not multiples of a panel's 16 pairs, row counts that leave a
    /// panel partly empty and token counts that leave a group of 12 partly empty. Without
    /// AVX-512 BF16, and for nf4 weights where the integer panels run, they are the f32
    /// products.
    #[test]
    fn bf16_products_match_their_scalar_twin() {
        use crate::tensor::quant::{quantize, Quant};
        let isa = Isa::detect();
        for (out, inp) in [(37, 45), (5, 16), (9, 257), (64, 33), (70, 128), (33, 192)] {
            let [f, h, b] = mats(out, inp, 41);
            let mut ms = vec![h, b];
            if inp.is_multiple_of(64) {
                ms.push(quantize(&f, Quant::Int8));
                ms.push(quantize(&f, Quant::Nf4));
            }
            for m in &ms {
                for t in [4, 5, 13, 30] {
                    let x = vals(t * inp, 42);
                    let mut want = vec![0.0; t * out];
                    let mut y = vec![0.0; t * out];
                    matmul_with(isa, Precision::Bf16, m, &x, t, &mut y);
                    let bh = bf16_product(isa, Precision::Bf16, m, t);
                    assert_eq!(
                        bh,
                        bf16_products_here()
                            && !(m.dtype() == DType::Nf4 && Panel::runs(isa, true))
                    );
                    if bh {
                        matmul_bf16_scalar(m, &x, t, &mut want);
                        // relative to the sum of |w x|, at most `inp`
                        close(&y, &want, 2e-6 * inp as f32);
                    } else {
                        matmul_with(isa, Precision::F32, m, &x, t, &mut want);
                        assert_eq!(y, want);
                    }
                }
            }
            // f32 weights keep f32 products.
            let x = vals(5 * inp, 43);
            let (mut a, mut b) = (vec![0.0; 5 * out], vec![0.0; 5 * out]);
            matmul_with(Isa::detect(), Precision::Bf16, &f, &x, 5, &mut a);
            matmul_with(Isa::detect(), Precision::F32, &f, &x, 5, &mut b);
            assert_eq!(a, b);
        }
    }

    /// The one-pass int8 and nf4 rows in bf16 are the dequantized rows rounded, bit for bit.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn quantized_rows_widen_to_bf16_exactly() {
        use crate::tensor::quant::{quantize, Quant};
        if !bf16_products_here() {
            return;
        }
        let (rows, cols) = (3, 5 * BLOCK);
        let mut v = vals(rows * cols, 61);
        v[..BLOCK].fill(0.0); // a block of zeros
        let base = Matrix::from_f32(rows, cols, v);
        for q in [Quant::Int8, Quant::Nf4] {
            let m = quantize(&base, q);
            let (mut f, mut got) = (vec![0.0; cols], vec![bf16::ZERO; cols]);
            for r in 0..rows {
                // SAFETY: AVX-512 BF16 is on this CPU (checked above).
                unsafe { row_bf16(&m, r, &mut f, &mut got) };
                m.row_f32(r, &mut f);
                let want: Vec<bf16> = f.iter().map(|&v| bf16::from_f32(v)).collect();
                assert_eq!(got, want, "{q:?} row {r}");
            }
        }
    }

    /// At bf16 precision a token's outputs do not depend on which tokens share the call,
    /// as long as it is a sequence product (4 tokens or more).
    #[test]
    fn bf16_products_do_not_depend_on_the_split() {
        let [_, _, m] = mats(100, 2048, 51);
        let x = vals(17 * 2048, 52);
        let mut all = vec![0.0; 17 * 100];
        matmul_with(Isa::detect(), Precision::Bf16, &m, &x, 17, &mut all);
        let mut parts = vec![0.0; 17 * 100];
        let (a, b) = parts.split_at_mut(5 * 100);
        matmul_with(Isa::detect(), Precision::Bf16, &m, &x[..5 * 2048], 5, a);
        matmul_with(Isa::detect(), Precision::Bf16, &m, &x[5 * 2048..], 12, b);
        assert_eq!(all, parts);
    }

    /// int8 and nf4 rows on every instruction set against the scalar integer path, bit for
    /// bit: one token (dots) and several (panels of 32 rows and 8 tokens, and the rest).
    #[test]
    fn quantized_matmul_matches_scalar_for_every_isa() {
        use crate::tensor::quant::{quantize, Quant};
        for (out, inp) in [(7, 128), (5, 64), (33, 192), (40, 17 * 64)] {
            let base = Matrix::from_f32(out, inp, vals(out * inp, 21));
            for q in [Quant::Int8, Quant::Nf4] {
                let m = quantize(&base, q);
                for t in [1, 2, 4, 7, 19] {
                    let x = vals(t * inp, 22);
                    let mut want = vec![0.0; t * out];
                    matmul_quant_scalar(&m, &x, t, &mut want);
                    for isa in Isa::available() {
                        let mut y = vec![0.0; t * out];
                        matmul_with(isa, Precision::F32, &m, &x, t, &mut y);
                        assert_eq!(y, want, "{q:?} {isa:?} {out}x{inp}, {t} tokens");
                        // one token at a time gives the same bits as the batch
                        for ti in 0..t {
                            let mut one = vec![0.0; out];
                            matmul_with(
                                isa,
                                Precision::F32,
                                &m,
                                &x[ti * inp..(ti + 1) * inp],
                                1,
                                &mut one,
                            );
                            assert_eq!(one, y[ti * out..(ti + 1) * out], "{q:?} {isa:?}");
                        }
                    }
                }
            }
        }
    }

    /// Products run together give the bits each gives alone, whatever the formats and
    /// widths mixed (narrow LoRA-like matrices take larger row tasks).
    #[test]
    fn batched_products_equal_single_ones() {
        use crate::tensor::quant::{quantize, Quant};
        let [f, h, b] = mats(70, 128, 31);
        let [.., narrow] = mats(300, 32, 32);
        let ms = [
            quantize(&f, Quant::Int8),
            quantize(&b, Quant::Nf4),
            f,
            h,
            b,
            narrow,
        ];
        for t in [1, 5] {
            let xs: Vec<Vec<f32>> = ms.iter().map(|m| vals(t * m.cols, 33)).collect();
            for isa in Isa::available() {
                let mut ys: Vec<Vec<f32>> = ms.iter().map(|m| vec![0.0; t * m.rows]).collect();
                let mut jobs: Vec<MatJob> = ms
                    .iter()
                    .zip(&xs)
                    .zip(ys.iter_mut())
                    .map(|((w, x), y)| MatJob::new(w, x, y))
                    .collect();
                matmuls_with(isa, Precision::F32, t, &mut jobs);
                for ((m, x), y) in ms.iter().zip(&xs).zip(&ys) {
                    let mut one = vec![0.0; t * m.rows];
                    matmul_with(isa, Precision::F32, m, x, t, &mut one);
                    assert_eq!(&one, y, "{:?} {isa:?} t={t}", m.dtype());
                    assert!(y.iter().any(|&v| v != 0.0));
                }
            }
        }
    }

    /// A token's result does not depend on how many tokens share the call, for wide
    /// matrices and for narrow ones (sixteen rows at a time, and the rest one by one).
    #[test]
    fn matmul_rows_are_independent_of_the_token_count() {
        for (out, inp) in [(13, 70), (37, 32), (21, 64), (16, 128)] {
            token_count_does_not_matter(out, inp);
        }
    }

    fn token_count_does_not_matter(out: usize, inp: usize) {
        let x = vals(9 * inp, 5);
        for m in &mats(out, inp, 6) {
            for isa in Isa::available() {
                let mut all = vec![0.0; 9 * out];
                matmul_with(isa, Precision::F32, m, &x, 9, &mut all);
                for ti in 0..9 {
                    let mut one = vec![0.0; out];
                    matmul_with(
                        isa,
                        Precision::F32,
                        m,
                        &x[ti * inp..(ti + 1) * inp],
                        1,
                        &mut one,
                    );
                    assert_eq!(one, all[ti * out..(ti + 1) * out], "{isa:?} token {ti}");
                }
            }
        }
    }

    #[test]
    fn norms_match_scalar() {
        let d = 24;
        let x0 = vals(3 * d, 5);
        let (w, b) = (vals(d, 6), vals(d, 7));
        let mut a = x0.clone();
        let mut s = x0.clone();
        Cpu::default().layer_norm(&mut a, &w, &b, 1e-5);
        layer_norm_scalar(&mut s, &w, &b, 1e-5);
        close(&a, &s, 1e-5);
        // group norm with 3 groups == layer norm of each group, then the affine part
        let mut g = x0.clone();
        Cpu::default().group_norm(&mut g, 3, &w, &b, 64e-5);
        let mut expect = x0.clone();
        let ones = vec![1.0; 8];
        let zeros = vec![0.0; 8];
        for grp in expect.chunks_mut(8) {
            layer_norm_scalar(grp, &ones, &zeros, 64e-5);
        }
        for row in expect.chunks_mut(d) {
            for ((v, wi), bi) in row.iter_mut().zip(&w).zip(&b) {
                *v = *v * wi + bi;
            }
        }
        close(&g, &expect, 1e-5);
    }

    /// Every instruction set against the scalar twin (and alike, bit for bit); `then` sees
    /// each head's outputs of each token once, after the recurrence.
    #[test]
    fn wkv_matches_scalar() {
        let mark: Then = &|ti, c0, o| o.iter_mut().for_each(|v| *v = *v * 3.0 + (ti + c0) as f32);
        for (h, s, t) in [(3, 5, 4), (2, 64, 3), (1, 33, 2), (4, 16, 1)] {
            let d = h * s;
            let (r, k, v) = (vals(t * d, 8), vals(t * d, 9), vals(t * d, 10));
            let w: Vec<f32> = vals(t * d, 11).iter().map(|x| 0.5 + 0.4 * x).collect();
            let u = vals(d, 12);
            let st0 = vals(h * s * s, 13);
            let mut st_b = st0.clone();
            let mut ob = vec![0.0; t * d];
            wkv_scalar(h, &r, &k, &v, &w, &u, &mut st_b, &mut ob);
            let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
            for isa in Isa::available() {
                let mut st_a = st0.clone();
                let mut oa = vec![0.0; t * d];
                wkv_with(isa, h, &r, &k, &v, &w, &u, &mut st_a, &mut oa, None);
                close(&oa, &ob, 1e-5);
                close(&st_a, &st_b, 1e-5);
                let (mut st_m, mut om) = (st0.clone(), vec![0.0; t * d]);
                wkv_with(isa, h, &r, &k, &v, &w, &u, &mut st_m, &mut om, Some(mark));
                let mut marked = oa.clone();
                for (ti, row) in marked.chunks_mut(d).enumerate() {
                    for (hi, o) in row.chunks_mut(s).enumerate() {
                        mark(ti, hi * s, o);
                    }
                }
                assert!(
                    om == marked && st_m == st_a,
                    "then: {isa:?} h={h} s={s} t={t}"
                );
                // every instruction set gives the same bits
                match &first {
                    None => first = Some((oa, st_a)),
                    Some((o, st)) => assert!(o == &oa && st == &st_a, "{isa:?}"),
                }
            }
        }
    }
}
