//! The RWKV-6 recurrence on the CPU: heads (of every stream) in parallel, each head's
//! tokens in order, compiled for each instruction set from one body of plain multiplies and
//! adds (no fused ones), so every instruction set gives the scalar twin's bits.

use super::shared::{with_scratch, SharedMut};
use crate::isa::Isa;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

thread_local! {
    /// A head's output accumulators `[S]`, for head sizes other than 64.
    static ACC: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// What a head's outputs go through after the recurrence: `f(row, first channel,
/// outputs)` on each token's `S` outputs of one head, from the task that computed them.
pub type HeadThen<'a> = &'a (dyn Fn(usize, usize, &mut [f32]) + Sync);

/// One head's inputs to the recurrence: `r, k, v [t, d]`, `w [t, wd]` (`wd` is `d`, or 0
/// for one decay for every token), `u [d]`, the head's channels `c0..c0 + s`; outputs are
/// written for rows from `from` on.
#[derive(Clone, Copy)]
struct WkvHead<'a> {
    d: usize,
    wd: usize,
    c0: usize,
    s: usize,
    from: usize,
    r: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    w: &'a [f32],
    u: &'a [f32],
}

/// One head of the recurrence over all `t` tokens, vectorised over the value index `j`.
/// `st [S, S]`, `acc [S]` scratch, `out` rows of stride `d` from this head's channel `c0`.
/// The bonus term is summed apart, `out[j] = (sum_i r[i] u[i] k[i]) v[j] + sum_i r[i]
/// s[i][j]`: five operations an element instead of seven.
#[inline(always)]
fn wkv_head_body(h: WkvHead, st: &mut [f32], acc: &mut [f32], out: SharedMut) {
    // Heads of 64 (every released RWKV-6) with the size a constant and the accumulators a
    // local array, which the compiler keeps in registers.
    if h.s == 64 {
        return wkv_head_loop(WkvHead { s: 64, ..h }, st, &mut [0.0; 64], out);
    }
    wkv_head_loop(h, st, acc, out)
}

#[inline(always)]
fn wkv_head_loop(h: WkvHead, st: &mut [f32], acc: &mut [f32], out: SharedMut) {
    let WkvHead {
        d,
        wd,
        c0,
        s,
        from,
        r,
        k,
        v,
        w,
        u,
    } = h;
    let t = r.len() / d;
    for ti in 0..t {
        let row = ti * d + c0;
        let wrow = ti * wd + c0;
        let vj = &v[row..row + s];
        acc.iter_mut().for_each(|a| *a = 0.0);
        let mut bonus = 0.0f32;
        for i in 0..s {
            let (ri, ki, wi) = (r[row + i], k[row + i], w[wrow + i]);
            bonus += ri * u[c0 + i] * ki;
            let srow = &mut st[i * s..(i + 1) * s];
            for ((sij, &vj), a) in srow.iter_mut().zip(vj).zip(acc.iter_mut()) {
                *a += ri * *sij;
                *sij = ki * vj + wi * *sij;
            }
        }
        if ti >= from {
            for (j, (a, &vj)) in acc.iter().zip(vj).enumerate() {
                // SAFETY: this head alone writes channels c0..c0+s of every row.
                unsafe { out.write(row + j, a + bonus * vj) };
            }
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

/// One head on `isa`.
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

/// The RWKV-6 recurrence (the scalar twin is [`super::scalar::wkv6`]) on `isa`, `D = H *
/// S`: `r, k, v [t, D]`, `w [t, D]` or `[D]` (the same decay for every token, RWKV-5.2's),
/// `u [H, S]`, `out [t, D]`; stream `i` is rows `spans[i]` with
/// state `states[i] [H, S, S]`. Outputs are written from row `from` on, each head's run of
/// each token then passed to `then` (with its row in `out`).
#[allow(clippy::too_many_arguments)]
pub fn wkv6_with(
    isa: Isa,
    heads: usize,
    spans: &[Range<usize>],
    r: &[f32],
    k: &[f32],
    v: &[f32],
    w: &[f32],
    u: &[f32],
    states: &mut [&mut [f32]],
    out: &mut [f32],
    from: usize,
    then: Option<HeadThen>,
) {
    assert!(isa.runs_here(), "{isa:?} is not available on this CPU");
    let d = u.len();
    let s = d / heads;
    assert_eq!(out.len(), r.len(), "wkv: out is not [t, D]");
    assert!(
        w.len() == r.len() || w.len() == d,
        "wkv: w is not [t, D] or [D]"
    );
    let wd = if w.len() == r.len() { d } else { 0 };
    assert_eq!(spans.len(), states.len(), "wkv: a state per stream");
    let op = SharedMut::new(out);
    let head = |span: &Range<usize>, h: usize, st: &mut [f32]| {
        let c0 = h * s;
        let rows = span.start * d..span.end * d;
        let out = op.offset(rows.start);
        with_scratch(&ACC, |acc| {
            acc.resize(s, 0.0);
            let head = WkvHead {
                d,
                wd,
                c0,
                s,
                from: from.saturating_sub(span.start),
                r: &r[rows.clone()],
                k: &k[rows.clone()],
                v: &v[rows.clone()],
                w: if wd == 0 { w } else { &w[rows.clone()] },
                u,
            };
            wkv_head(isa, head, st, &mut acc[..s], out)
        });
        if let Some(f) = then {
            for ti in span.start.max(from)..span.end {
                // SAFETY: this head alone wrote channels c0..c0 + s of every row.
                f(ti, c0, unsafe { op.run(ti * d + c0, s) });
            }
        }
    };
    for st in states.iter() {
        assert_eq!(st.len(), heads * s * s, "wkv: state is not [H, S, S]");
    }
    if let ([span], [st]) = (spans, &mut *states) {
        st.par_chunks_mut(s * s)
            .enumerate()
            .for_each(|(h, st)| head(span, h, st));
        return;
    }
    let mut all: Vec<(&Range<usize>, usize, &mut [f32])> = Vec::new();
    for (span, st) in spans.iter().zip(states.iter_mut()) {
        for (h, hs) in st.chunks_mut(s * s).enumerate() {
            all.push((span, h, hs));
        }
    }
    all.into_par_iter()
        .for_each(|(span, h, st)| head(span, h, st));
}
