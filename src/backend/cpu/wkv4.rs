//! The RWKV-4 recurrence on the CPU ([`crate::backend::Wkv4`]): each channel of each stream
//! on its own, tokens in order, runs of channels in parallel.

use super::shared::SharedMut;
use rayon::prelude::*;
use std::ops::Range;

/// Channels a task takes.
const RUN: usize = 64;

/// One stream's state for a run of channels: `aa`, `bb`, `pp`.
pub type Run<'a> = [&'a mut [f32]; 3];

/// The recurrence on channels `c0..c0 + n` of one stream (`n` the run's length) over its
/// rows: `k, v [t, D]`, `r` rows of `D` from row `from` (its row 0 is row `from`), `w, u
/// [D]`; `out` rows of `D`, written from row `from` on.
pub fn channels(
    d: usize,
    c0: usize,
    (k, v, r): (&[f32], &[f32], &[f32]),
    (w, u): (&[f32], &[f32]),
    [aa, bb, pp]: Run,
    out: SharedMut,
    from: usize,
) {
    let t = k.len() / d;
    for ti in 0..t {
        let row = ti * d + c0;
        for i in 0..aa.len() {
            let (ch, kt, vt) = (c0 + i, k[row + i], v[row + i]);
            // while bb is 0 nothing has been seen: pp is minus infinity
            let p0 = if bb[i] == 0.0 {
                f32::NEG_INFINITY
            } else {
                pp[i]
            };
            if ti >= from {
                let q = u[ch] + kt;
                let p = p0.max(q);
                let (e1, e2) = ((p0 - p).exp(), (q - p).exp());
                let y = (e1 * aa[i] + e2 * vt) / (e1 * bb[i] + e2);
                // SAFETY: this run alone writes these channels of every row.
                unsafe { out.write(row + i, r[(ti - from) * d + ch] * y) };
            }
            let q = w[ch] + p0;
            let p = q.max(kt);
            let (e1, e2) = ((q - p).exp(), (kt - p).exp());
            aa[i] = e1 * aa[i] + e2 * vt;
            bb[i] = e1 * bb[i] + e2;
            pp[i] = p;
        }
    }
}

/// [`channels`] over every stream (stream `i` is rows `spans[i]` with state `states[i]
/// [3, D]`), one stream after another, each stream's runs of channels in parallel.
pub fn wkv4(
    spans: &[Range<usize>],
    (k, v, r): (&[f32], &[f32], &[f32]),
    (w, u): (&[f32], &[f32]),
    states: &mut [&mut [f32]],
    out: &mut [f32],
    from: usize,
) {
    let d = w.len();
    assert_eq!(out.len(), k.len(), "wkv4: out is not [t, D]");
    assert_eq!(spans.len(), states.len(), "wkv4: a state per stream");
    let op = SharedMut::new(out);
    for (span, st) in spans.iter().zip(states.iter_mut()) {
        assert_eq!(st.len(), 3 * d, "wkv4: state is not [3, D]");
        let rows = span.start * d..span.end * d;
        let local_from = from.saturating_sub(span.start);
        // r's row 0 is row `from`: this stream's first output row in it
        let r_at = ((span.start + local_from).saturating_sub(from) * d).min(r.len());
        let ins = (&k[rows.clone()], &v[rows.clone()], &r[r_at..]);
        let out = op.offset(rows.start);
        let (aa, rest) = st.split_at_mut(d);
        let (bb, pp) = rest.split_at_mut(d);
        let runs = aa.par_chunks_mut(RUN).zip(bb.par_chunks_mut(RUN));
        runs.zip(pp.par_chunks_mut(RUN))
            .enumerate()
            .for_each(|(c, ((aa, bb), pp))| {
                channels(d, c * RUN, ins, (w, u), [aa, bb, pp], out, local_from)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From the zero (empty) state the first token's output is `r * v` and the state its
    /// own `aa = v, bb = 1, pp = k`, as the official package's `pp = -1e30` start gives;
    /// the second token weighs the two by `exp(u + k2)` against `exp(k1)`.
    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn the_zero_state_is_the_empty_one() {
        let (k, v, r) = (
            [0.5f32, -90.0, 0.25, 3.0],
            [2.0f32, -1.0, 4.0, 0.5],
            [0.5f32; 4],
        );
        let (w, u) = ([-0.5f32, -2.0], [0.3f32, -0.2]);
        let mut st = [0.0f32; 6];
        let mut out = [0.0f32; 4];
        wkv4(&[0..2], (&k, &v, &r), (&w, &u), &mut [&mut st], &mut out, 0);
        assert_eq!(&out[..2], &[1.0, -0.5]);
        let (p, q) = (k[0], u[0] + k[2]); // channel 0: the first token's mass, the bonus's
        let m = p.max(q);
        let (e1, e2) = ((p - m).exp(), (q - m).exp());
        let want = 0.5 * (e1 * v[0] + e2 * v[2]) / (e1 + e2);
        assert!((out[2] - want).abs() < 1e-6, "{} vs {want}", out[2]);
        // channel 1's first key is far below any decayed mass: still exact, no 0/0
        assert!(out[3].is_finite());
        let mut one = [0.0f32; 6];
        wkv4(
            &[0..1],
            (&k[..2], &v[..2], &r[..2]),
            (&w, &u),
            &mut [&mut one],
            &mut [0.0; 2],
            0,
        );
        assert_eq!(one, [2.0, -1.0, 1.0, 1.0, 0.5, -90.0]);
    }
}
