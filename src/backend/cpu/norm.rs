//! Norms, the token shift and the static mixes on the CPU: a token's row on the calling
//! thread, a prompt's rows spread over the threads.

use super::tuning::PIECE;
use rayon::prelude::*;
use std::ops::Range;

/// `sum(f(x))` in sixteen lanes (element `i` into lane `i % 16`), then the lanes in halves:
/// sixteen independent chains the compiler vectorises, in one order on every instruction
/// set.
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

/// Per row of `x [t, D]`: `(x - mean) / sqrt(var + eps) * weight + bias`, in place.
pub fn layer_norm(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let norm = |row: &mut [f32]| {
        normalize(row, eps);
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = *v * w + b;
        }
    };
    if x.len() == weight.len() {
        norm(x)
    } else {
        x.par_chunks_mut(weight.len()).for_each(norm)
    }
}

/// One group of channels `x [S]` normalised on its own, then `* weight + bias` (`[S]`, the
/// group's part of the affine vectors).
pub fn group_norm(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    normalize(x, eps);
    for ((v, w), b) in x.iter_mut().zip(weight).zip(bias) {
        *v = *v * w + b;
    }
}

/// `sx[t] = prev(t) - xx[t]` where `prev(0)` is the shift state and `prev(t) = xx[t-1]`;
/// the shift state becomes the last row. `xx`, `sx` are `[T, D]`.
pub fn token_shift(xx: &[f32], shift: &mut [f32], sx: &mut [f32]) {
    let d = shift.len();
    for (t, (row, out)) in xx.chunks(d).zip(sx.chunks_mut(d)).enumerate() {
        let prev = if t == 0 {
            &*shift
        } else {
            &xx[(t - 1) * d..t * d]
        };
        for ((o, p), x) in out.iter_mut().zip(prev).zip(row) {
            *o = p - x;
        }
    }
    shift.copy_from_slice(&xx[xx.len() - d..]);
}

/// `f(first row, rows)` over `v [T, d]` in pieces of whole rows (about [`PIECE`] elements),
/// in parallel, so that per-channel vectors zip with each row.
fn par_rows(v: &mut [f32], d: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let rows = (PIECE / d).max(1);
    if v.len() <= rows * d {
        return f(0, v);
    }
    v.par_chunks_mut(rows * d)
        .enumerate()
        .for_each(|(i, p)| f(i * rows, p));
}

/// `out[t] = xx[t] + sx[t] * maa` over `[T, D]`.
pub fn mix(xx: &[f32], sx: &[f32], maa: &[f32], out: &mut [f32]) {
    let d = maa.len();
    par_rows(out, d, |r0, p| {
        for (k, o) in p.chunks_mut(d).enumerate() {
            let row = (r0 + k) * d..(r0 + k + 1) * d;
            let xs = o.iter_mut().zip(&xx[row.clone()]).zip(&sx[row]);
            xs.zip(maa).for_each(|(((o, x), s), m)| *o = x + s * m);
        }
    });
}

/// [`token_shift`] for each stream: rows `spans[i]` of `xx` and `sx` with state `states[i]`
/// (its `shift` range).
pub fn token_shifts(
    xx: &[f32],
    sx: &mut [f32],
    d: usize,
    spans: &[Range<usize>],
    states: &mut [&mut Vec<f32>],
    shift: Range<usize>,
) {
    for (span, st) in spans.iter().zip(states.iter_mut()) {
        let rows = span.start * d..span.end * d;
        token_shift(&xx[rows.clone()], &mut st[shift.clone()], &mut sx[rows]);
    }
}
