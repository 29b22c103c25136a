//! The RWKV-7 recurrence on the CPU: heads (of every stream) in parallel, each head's tokens
//! in order. A head's state is stored `[value i, key j]` (the official order); its task
//! works on a transposed copy `[key j, value i]`, so that both sums over `j` run as vectors
//! over `i` with no horizontal sums. One body of plain multiplies and adds (no fused ones)
//! is compiled for each instruction set, so every instruction set gives the bits of the
//! scalar twin [`super::scalar::wkv7`].

use super::norm;
use super::schedule::{with_scratch, SharedMut};
use crate::isa::Isa;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

thread_local! {
    /// A head's transposed state `[N, N]` and six vectors `[N]`.
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
    /// The unit removal key, and it times `a`.
    kk: &'s mut [f32],
    ka: &'s mut [f32],
    /// The key and value the state takes.
    k: &'s mut [f32],
    v: &'s mut [f32],
    /// `sum_j s[i][j] (-kk[j])`, and the output.
    sa: &'s mut [f32],
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
        vs.kk[j] = q;
        sq += q * q;
    }
    let len = sq.sqrt().max(NORM_EPS);
    for j in 0..n {
        let a = x.a[row + j];
        vs.kk[j] /= len;
        vs.ka[j] = vs.kk[j] * a;
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

/// One head over all its tokens; `st [N, N]` its transposed state (`[key j, value i]`).
#[inline(always)]
fn head_body(h: Head, st: &mut [f32], vs: &mut Vecs, out: SharedMut) {
    let (x, n, d) = (&h.x, h.n, h.d);
    let t = x.r.len() / d;
    for ti in 0..t {
        let row = ti * d + h.c0;
        prepare(&h, row, vs);
        vs.sa.iter_mut().for_each(|s| *s = 0.0);
        for j in 0..n {
            let m = -vs.kk[j];
            for (s, c) in vs.sa.iter_mut().zip(&st[j * n..(j + 1) * n]) {
                *s += *c * m;
            }
        }
        let sa = &*vs.sa;
        let vv = &*vs.v;
        if ti < h.from {
            for j in 0..n {
                let (w, ka, k) = (x.w[row + j], vs.ka[j], vs.k[j]);
                for ((c, &s), &v) in st[j * n..(j + 1) * n].iter_mut().zip(sa).zip(vv) {
                    *c = *c * w + s * ka + v * k;
                }
            }
            continue;
        }
        vs.o.iter_mut().for_each(|o| *o = 0.0);
        for j in 0..n {
            let (w, ka, k, r) = (x.w[row + j], vs.ka[j], vs.k[j], x.r[row + j]);
            let col = st[j * n..(j + 1) * n].iter_mut().zip(sa).zip(vv);
            for (((c, &s), &v), o) in col.zip(vs.o.iter_mut()) {
                *c = *c * w + s * ka + v * k;
                *o += *c * r;
            }
        }
        // GroupNorm, the current token's bonus, the gate
        let ch = h.c0..h.c0 + n;
        let (lw, lb, eps) = x.ln;
        norm::group_norm(vs.o, &lw[ch.clone()], &lb[ch.clone()], eps);
        let mut bonus = 0.0f32;
        for j in 0..n {
            bonus += x.r[row + j] * vs.k[j] * x.r_k[h.c0 + j];
        }
        let g = &x.g[(ti - h.from) * d + h.c0..];
        for i in 0..n {
            // SAFETY: this head alone writes channels c0..c0 + n of every row.
            unsafe { out.write(row + i, (vs.o[i] + bonus * vv[i]) * g[i]) };
        }
    }
}

/// [`head_body`] with the head size a constant where it is 64 (every released model).
#[inline(always)]
fn head_sized(h: Head, st: &mut [f32], vs: &mut Vecs, out: SharedMut) {
    if h.n == 64 {
        return head_body(Head { n: 64, ..h }, st, vs, out);
    }
    head_body(h, st, vs, out)
}

/// [`head_body`] compiled for AVX-512 (the portable build is SSE2).
///
/// # Safety
/// AVX-512F on this CPU.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn head_avx512(h: Head, st: &mut [f32], vs: &mut Vecs, out: SharedMut) {
    head_sized(h, st, vs, out)
}

/// [`head_body`] compiled for AVX2.
///
/// # Safety
/// AVX2 on this CPU.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn head_avx2(h: Head, st: &mut [f32], vs: &mut Vecs, out: SharedMut) {
    head_sized(h, st, vs, out)
}

/// One head on `isa`, its state `[N, N]` (`[value, key]`) updated.
fn head(isa: Isa, h: Head, state: &mut [f32], out: SharedMut) {
    let n = h.n;
    with_scratch(&SCRATCH, |buf| {
        buf.resize(n * n + 6 * n, 0.0);
        let (st, rest) = buf.split_at_mut(n * n);
        transpose(isa, state, st, n);
        let (kk, rest) = rest.split_at_mut(n);
        let (ka, rest) = rest.split_at_mut(n);
        let (k, rest) = rest.split_at_mut(n);
        let (v, rest) = rest.split_at_mut(n);
        let (sa, o) = rest.split_at_mut(n);
        let mut vs = Vecs {
            kk,
            ka,
            k,
            v,
            sa,
            o,
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` was detected on this CPU (Isa::detect).
        unsafe {
            match isa {
                Isa::Avx512 => head_avx512(h, st, &mut vs, out),
                Isa::Avx2 => head_avx2(h, st, &mut vs, out),
                Isa::Portable => head_sized(h, st, &mut vs, out),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = isa;
            head_sized(h, st, &mut vs, out);
        }
        transpose(isa, st, state, n);
    });
}

/// `dst [n, n]` = `src [n, n]` transposed: a token of one stream moves its head's state
/// in and out of the kernel's `[key, value]` order, as much data as the token's own work.
fn transpose(isa: Isa, src: &[f32], dst: &mut [f32], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && n.is_multiple_of(16) {
        // SAFETY: `isa` was detected on this CPU (Isa::detect); both are `[n, n]`.
        return unsafe { super::arch::x86::transpose_square(src, dst, n) };
    }
    let _ = isa;
    for i in 0..n {
        for j in 0..n {
            dst[j * n + i] = src[i * n + j];
        }
    }
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

    /// The vector transpose moves every element where the loop does.
    #[test]
    fn transposes_agree() {
        for n in [16, 48, 64, 8] {
            let src = vals(n * n, 9);
            let mut want = vec![0.0; n * n];
            transpose(Isa::Portable, &src, &mut want, n);
            assert_eq!(want[n + 2], src[2 * n + 1]);
            for isa in Isa::available() {
                let mut got = vec![0.0; n * n];
                transpose(isa, &src, &mut got, n);
                assert_eq!(got, want, "{isa:?}, n = {n}");
            }
        }
    }

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
