//! The RWKV-7 recurrence on the CPU: heads (of every stream) in parallel, each head's tokens
//! in order. A head's state `[value i, key j]` (the official order) is updated where it
//! lies, a row at a time: a row's two sums over the keys (`sa`, and the output) run in
//! sixteen lanes, key `j` in lane `j % 16` in order, reduced by [`tree16`]. One portable
//! body of plain multiplies and adds (no fused ones) is compiled for each instruction set;
//! AVX-512 runs sixteen rows at a time in the same order
//! ([`super::arch::x86::wkv7::update_rows`]). Every instruction set gives the bits of the
//! scalar twin [`super::scalar::wkv7`].

use super::norm;
use super::shared::tree16;
use super::shared::{with_scratch, SharedMut};
use crate::isa::Isa;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

thread_local! {
    /// A head's five vectors `[N]`.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The L2 norm's floor, as `F.normalize`'s `eps`.
pub const NORM_EPS: f32 = 1e-12;

/// The inputs of one layer's recurrence, `[t, D]` rows unless noted (see
/// [`crate::backend::Wkv7`]).
#[derive(Clone, Copy)]
pub struct Wkv7In<'a> {
    pub r: &'a [f32],
    pub w: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub a: &'a [f32],
    /// The value-residual gate, and layer 0's values; `None` in layer 0.
    pub residual: Option<(&'a [f32], &'a [f32])>,
    /// `[D]` each.
    pub k_k: &'a [f32],
    pub k_a: &'a [f32],
    pub r_k: &'a [f32],
    /// GroupNorm's affine part `[D]` each, and epsilon.
    pub ln: (&'a [f32], &'a [f32], f32),
    /// The gate, rows from `from` on.
    pub g: &'a [f32],
}

/// One head of one stream: its rows of every input, and channels `c0..c0 + n`.
#[derive(Clone, Copy)]
struct Head<'a> {
    x: Wkv7In<'a>,
    d: usize,
    c0: usize,
    n: usize,
    from: usize,
}

/// A head's per-token vectors `[N]` each.
struct Vecs<'s> {
    /// The unit removal key negated, and the key times `a`.
    neg_kk: &'s mut [f32],
    ka: &'s mut [f32],
    /// The key and value the state takes.
    k: &'s mut [f32],
    v: &'s mut [f32],
    /// The output.
    o: &'s mut [f32],
}

/// Row `row`'s (channel `c0`'s) removal key, key and value, as [`super::scalar::wkv7`]
/// computes them.
#[inline(always)]
fn prepare(h: &Head, row: usize, vs: &mut Vecs) {
    let (x, n, c0) = (&h.x, h.n, h.c0);
    let mut sq = 0.0f32;
    for j in 0..n {
        let q = x.k[row + j] * x.k_k[c0 + j];
        vs.neg_kk[j] = q;
        sq += q * q;
    }
    let len = sq.sqrt().max(NORM_EPS);
    for j in 0..n {
        let a = x.a[row + j];
        let kk = vs.neg_kk[j] / len;
        vs.neg_kk[j] = -kk;
        vs.ka[j] = kk * a;
        vs.k[j] = x.k[row + j] * (1.0 + (a - 1.0) * x.k_a[c0 + j]);
    }
    for i in 0..n {
        let v = x.v[row + i];
        vs.v[i] = match x.residual {
            None => v,
            Some((vg, first)) => v + (first[row + i] - v) * vg[row + i],
        };
    }
}

/// `a . b` in sixteen lanes (element `j` in lane `j % 16`, in order), reduced by
/// [`tree16`]: the order of both sums over a state row.
#[inline(always)]
pub fn lanes_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (ca, cb) in a.chunks(16).zip(b.chunks(16)) {
        for ((s, &p), &q) in acc.iter_mut().zip(ca).zip(cb) {
            *s += p * q;
        }
    }
    tree16(acc)
}

/// One token's update of a head's state `st [n, n]` (`[value i, key j]`), row by row; the
/// output `o[i]` when `out`.
#[inline(always)]
fn update_rows(st: &mut [f32], n: usize, vs: &mut Vecs, w: &[f32], r: &[f32], out: bool) {
    for (i, row) in st.chunks_exact_mut(n).enumerate() {
        let sa = lanes_dot(row, vs.neg_kk);
        let vi = vs.v[i];
        for (((c, &w), &ka), &k) in row.iter_mut().zip(w).zip(&*vs.ka).zip(&*vs.k) {
            *c = *c * w + sa * ka + vi * k;
        }
        if out {
            vs.o[i] = lanes_dot(row, r);
        }
    }
}

/// One head over all its tokens; `st [N, N]` its state.
#[inline(always)]
fn head_body(isa: Isa, h: Head, st: &mut [f32], vs: &mut Vecs, out: SharedMut) {
    let (x, n, d) = (&h.x, h.n, h.d);
    let t = x.r.len() / d;
    for ti in 0..t {
        let row = ti * d + h.c0;
        prepare(&h, row, vs);
        let (w, r) = (&x.w[row..row + n], &x.r[row..row + n]);
        let emit = ti >= h.from;
        rows(isa, st, n, vs, w, r, emit);
        if !emit {
            continue;
        }
        // GroupNorm, the current token's bonus, the gate
        let ch = h.c0..h.c0 + n;
        let (lw, lb, eps) = x.ln;
        norm::group_norm(vs.o, &lw[ch.clone()], &lb[ch.clone()], eps);
        let mut bonus = 0.0f32;
        for j in 0..n {
            bonus += x.r[row + j] * vs.k[j] * x.r_k[h.c0 + j];
        }
        let g = &x.g[(ti - h.from) * d + h.c0..][..n];
        for (i, ((&o, &v), &g)) in vs.o.iter().zip(&*vs.v).zip(g).enumerate() {
            // SAFETY: this head alone writes channels c0..c0 + n of every row.
            unsafe { out.write(row + i, (o + bonus * v) * g) };
        }
    }
}

/// [`update_rows`] on `isa`: sixteen rows at a time on AVX-512 when `n` allows, the
/// portable body (compiled for the caller's instruction set) otherwise; the same bits.
#[inline(always)]
fn rows(isa: Isa, st: &mut [f32], n: usize, vs: &mut Vecs, w: &[f32], r: &[f32], out: bool) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && n.is_multiple_of(16) {
        use super::arch::x86::wkv7::{update_rows, Keys};
        let keys = Keys {
            neg_kk: vs.neg_kk,
            ka: vs.ka,
            k: vs.k,
            w,
            r,
        };
        let o = if out { Some(&mut *vs.o) } else { None };
        // SAFETY: `isa` was detected on this CPU (Isa::detect).
        return unsafe { update_rows(st, n, &keys, vs.v, o) };
    }
    let _ = isa;
    update_rows(st, n, vs, w, r, out)
}

/// [`head_body`] with the head size a constant where it is 64 (every released model).
#[inline(always)]
fn head_sized(isa: Isa, h: Head, st: &mut [f32], vs: &mut Vecs, out: SharedMut) {
    if h.n == 64 {
        return head_body(isa, Head { n: 64, ..h }, st, vs, out);
    }
    head_body(isa, h, st, vs, out)
}

/// [`head_body`] compiled for AVX-512 (the portable build is SSE2).
///
/// # Safety
/// AVX-512F on this CPU.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn head_avx512(h: Head, st: &mut [f32], vs: &mut Vecs, out: SharedMut) {
    head_sized(Isa::Avx512, h, st, vs, out)
}

/// [`head_body`] compiled for AVX2.
///
/// # Safety
/// AVX2 on this CPU.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn head_avx2(h: Head, st: &mut [f32], vs: &mut Vecs, out: SharedMut) {
    head_sized(Isa::Avx2, h, st, vs, out)
}

/// One head on `isa`, its state `[N, N]` (`[value, key]`) updated.
fn head(isa: Isa, h: Head, state: &mut [f32], out: SharedMut) {
    let n = h.n;
    with_scratch(&SCRATCH, |buf| {
        buf.resize(5 * n, 0.0);
        let (neg_kk, rest) = buf.split_at_mut(n);
        let (ka, rest) = rest.split_at_mut(n);
        let (k, rest) = rest.split_at_mut(n);
        let (v, o) = rest.split_at_mut(n);
        let mut vs = Vecs {
            neg_kk,
            ka,
            k,
            v,
            o,
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` was detected on this CPU (Isa::detect).
        unsafe {
            match isa {
                Isa::Avx512 => head_avx512(h, state, &mut vs, out),
                Isa::Avx2 => head_avx2(h, state, &mut vs, out),
                Isa::Portable => head_sized(isa, h, state, &mut vs, out),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        head_sized(isa, h, state, &mut vs, out);
    });
}

/// The RWKV-7 recurrence with its GroupNorm, bonus and gate on `isa`, `D = H * N`: stream
/// `i` is rows `spans[i]` of `x`'s tensors with state `states[i] [H, N, N]`; `out [t, D]`
/// is written for rows from `from` on (`x.g`'s row 0 is row `from`).
pub fn wkv7_with<'a>(
    isa: Isa,
    heads: usize,
    spans: &[Range<usize>],
    x: Wkv7In<'a>,
    states: &mut [&mut [f32]],
    out: &mut [f32],
    from: usize,
) {
    assert!(isa.runs_here(), "{isa:?} is not available on this CPU");
    let d = x.k_k.len();
    let n = d / heads;
    for (name, t) in [("r", x.r), ("w", x.w), ("k", x.k), ("v", x.v), ("a", x.a)] {
        assert_eq!(t.len(), out.len(), "wkv7: {name} is not [t, D]");
    }
    assert_eq!(spans.len(), states.len(), "wkv7: a state per stream");
    for st in states.iter() {
        assert_eq!(st.len(), heads * n * n, "wkv7: state is not [H, N, N]");
    }
    let op = SharedMut::new(out);
    let task = |span: &Range<usize>, hd: usize, st: &mut [f32]| {
        let rows = span.start * d..span.end * d;
        let local_from = from.saturating_sub(span.start);
        let g_row = span.start.max(from) - from;
        let part = |t: &'a [f32]| &t[rows.clone()];
        let h = Head {
            x: Wkv7In {
                r: part(x.r),
                w: part(x.w),
                k: part(x.k),
                v: part(x.v),
                a: part(x.a),
                residual: x.residual.map(|(vg, f)| (part(vg), part(f))),
                g: x.g.get(g_row * d..).unwrap_or_default(),
                ..x
            },
            d,
            c0: hd * n,
            n,
            from: local_from,
        };
        head(isa, h, st, op.offset(rows.start));
    };
    if let ([span], [st]) = (spans, &mut *states) {
        st.par_chunks_mut(n * n)
            .enumerate()
            .for_each(|(hd, st)| task(span, hd, st));
        return;
    }
    let mut all: Vec<(&Range<usize>, usize, &mut [f32])> = Vec::new();
    for (span, st) in spans.iter().zip(states.iter_mut()) {
        for (hd, hs) in st.chunks_mut(n * n).enumerate() {
            all.push((span, hd, hs));
        }
    }
    all.into_par_iter()
        .for_each(|(span, hd, st)| task(span, hd, st));
}

#[cfg(test)]
// Spans are lists of token ranges, one per stream; a list of one is a single stream.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::super::scalar;
    use super::super::tests::vals;
    use super::*;

    /// Values in `lo..hi`.
    fn range(n: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
        let mid = (lo + hi) / 2.0;
        vals(n, seed).iter().map(|x| mid + x * (hi - mid)).collect()
    }

    /// Every instruction set against the scalar twin: the state bit for bit, the outputs
    /// within the GroupNorm's rounding; rows before `from` are not written; several
    /// streams give each stream's bits alone; layer 0 (no residual) and the others.
    #[test]
    fn wkv7_matches_scalar() {
        for (h, n, t) in [(2, 64, 3), (3, 8, 4), (1, 16, 1)] {
            let d = h * n;
            let (r, k, v) = (vals(t * d, 1), vals(t * d, 2), vals(t * d, 3));
            let w = range(t * d, 4, 0.55, 1.0);
            let a = range(t * d, 5, 0.0, 1.0);
            let vg = range(t * d, 6, 0.0, 1.0);
            let first = vals(t * d, 7);
            let (k_k, k_a, r_k) = (range(d, 8, 0.6, 0.8), range(d, 9, 0.9, 1.1), vals(d, 10));
            let (lw, lb, g) = (vals(d, 11), vals(d, 12), vals(t * d, 13));
            let st0 = vals(h * n * n, 14);
            for residual in [None, Some((&vg[..], &first[..]))] {
                let x = Wkv7In {
                    r: &r,
                    w: &w,
                    k: &k,
                    v: &v,
                    a: &a,
                    residual,
                    k_k: &k_k,
                    k_a: &k_a,
                    r_k: &r_k,
                    ln: (&lw, &lb, 64e-5),
                    g: &g,
                };
                let what = format!("h={h} n={n} t={t} residual={}", residual.is_some());
                let (mut st_b, mut ob) = (st0.clone(), vec![0.0; t * d]);
                scalar::wkv7(h, &x, &mut st_b, &mut ob, 0);
                let mut seen: Option<(Vec<f32>, Vec<f32>)> = None;
                for isa in Isa::available() {
                    let whole = [0..t];
                    let (mut st_a, mut oa) = (st0.clone(), vec![0.0; t * d]);
                    wkv7_with(isa, h, &whole, x, &mut [&mut st_a], &mut oa, 0);
                    assert!(st_a == st_b, "{isa:?} {what}: state");
                    for (i, (p, q)) in oa.iter().zip(&ob).enumerate() {
                        assert!(
                            (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                            "{isa:?} {what} at {i}: {p} vs {q}"
                        );
                    }
                    // only the last row's outputs, g's row 0 being that row
                    let xf = Wkv7In { g: &g[..d], ..x };
                    let (mut st_f, mut of) = (st0.clone(), vec![f32::NAN; t * d]);
                    wkv7_with(isa, h, &whole, xf, &mut [&mut st_f], &mut of, t - 1);
                    assert!(st_f == st_a, "{isa:?} {what}: state with from");
                    assert!(of[..(t - 1) * d].iter().all(|v| v.is_nan()));
                    let mut last = ob[(t - 1) * d..].to_vec();
                    let (mut st_s, mut os) = (st0.clone(), vec![0.0; t * d]);
                    scalar::wkv7(h, &xf, &mut st_s, &mut os, t - 1);
                    last.copy_from_slice(&os[(t - 1) * d..]);
                    for (p, q) in of[(t - 1) * d..].iter().zip(&last) {
                        assert!(
                            (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                            "{isa:?} {what}: from"
                        );
                    }
                    match &seen {
                        None => seen = Some((oa.clone(), st_a.clone())),
                        Some((o, st)) => assert!(o == &oa && st == &st_a, "{isa:?} {what}"),
                    }
                    if t < 2 {
                        continue;
                    }
                    // rows 1.. as a second stream: its bits are those of its rows alone
                    let (mut s1, mut s2, mut o2) = (st0.clone(), st0.clone(), vec![0.0; t * d]);
                    wkv7_with(
                        isa,
                        h,
                        &[0..1, 1..t],
                        x,
                        &mut [&mut s1, &mut s2],
                        &mut o2,
                        0,
                    );
                    let rows = d..t * d;
                    let tail = |v: &[f32]| v[rows.clone()].to_vec();
                    let (r1, w1, k1, v1, a1, g1) =
                        (tail(&r), tail(&w), tail(&k), tail(&v), tail(&a), tail(&g));
                    let (vg1, f1) = (tail(&vg), tail(&first));
                    let x1 = Wkv7In {
                        r: &r1,
                        w: &w1,
                        k: &k1,
                        v: &v1,
                        a: &a1,
                        residual: residual.map(|_| (&vg1[..], &f1[..])),
                        g: &g1,
                        ..x
                    };
                    let (mut s_alone, mut o_alone) = (st0.clone(), vec![0.0; (t - 1) * d]);
                    wkv7_with(
                        isa,
                        h,
                        &[0..t - 1],
                        x1,
                        &mut [&mut s_alone],
                        &mut o_alone,
                        0,
                    );
                    assert!(
                        o2[rows] == o_alone[..] && s2 == s_alone,
                        "{isa:?} {what}: streams"
                    );
                }
            }
        }
    }
}
