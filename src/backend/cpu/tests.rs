//! Every CPU kernel against its scalar twin, on every instruction set this CPU has.

use super::bf16::bf16_products_here;
use super::plan::{kernel, Kernel};
use super::quant::panel::Panel;
use super::scalar;
use super::wkv::{wkv6_with, HeadThen};
use super::{dense::dot, matmul_with, matmuls_with, norm, MatJob};
use crate::backend::Precision;
use crate::isa::Isa;
use crate::tensor::quant::BLOCK;
use crate::tensor::{Buf, DType, Data, Matrix};
use half::{bf16, f16};

/// Deterministic values in [-1, 1).
pub fn vals(n: usize, seed: u32) -> Vec<f32> {
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
        let (x, y) = (dot(&a, &b), scalar::dot(&a, &b));
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
                scalar::matmul(m, &x, t, &mut want);
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
                let bh = kernel(isa, Precision::Bf16, m, t) == Kernel::Bf16Panels;
                assert_eq!(
                    bh,
                    bf16_products_here() && !(m.dtype() == DType::Nf4 && Panel::runs(isa, true))
                );
                if bh {
                    scalar::matmul_bf16(m, &x, t, &mut want);
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
            unsafe { super::bf16::row_bf16(&m, r, &mut f, &mut got) };
            m.row_f32(r, &mut f);
            let want: Vec<bf16> = f.iter().map(|&v| bf16::from_f32(v)).collect();
            assert_eq!(got, want, "{q:?} row {r}");
        }
    }
}

/// Generation products at bf16 precision (bf16 rows wider than the LoRA factors): one to
/// three tokens dot each row, four streams or more run four-by-four tiles (from sixteen,
/// a block of columns at a time), and both give the scalar twin's sums bit for bit,
/// whatever the token count and width (odd, or several blocks and a part). f32 and f16
/// rows, and narrow bf16 rows, keep their f32 kernels; without AVX-512 BF16 every product
/// is f32.
#[test]
fn bf16_stream_products_match_their_scalar_twin_whatever_the_count() {
    let isa = Isa::detect();
    let here = bf16_products_here();
    let most = 19;
    for (out, inp) in [
        (9, 257),
        (37, 160),
        (70, 2048),
        (5, 130),
        (21, 64),
        (6, 1321),
    ] {
        let [f, h, b] = mats(out, inp, 61);
        let x = vals(most * inp, 62);
        let mut want = vec![0.0; most * out];
        scalar::matmul_bf16_rows(&b, &x, most, &mut want);
        for t in [1, 2, 3, 4, 5, 8, 13, 16, 19] {
            let x = &x[..t * inp];
            let run = |m: &Matrix, p| {
                let mut y = vec![0.0; t * out];
                matmul_with(isa, p, m, x, t, &mut y);
                y
            };
            let (k, y) = (
                kernel(isa, Precision::Bf16Streams, &b, t),
                run(&b, Precision::Bf16Streams),
            );
            if here && inp > 128 {
                let tiles = if t < 4 {
                    Kernel::Bf16Dots
                } else {
                    Kernel::Bf16Tiles
                };
                assert_eq!(k, tiles, "{out}x{inp}, {t} tokens");
                assert_eq!(y, want[..t * out], "{out}x{inp}, {t} tokens");
                if t < 4 {
                    assert_eq!(run(&b, Precision::Bf16), y, "{out}x{inp}, {t} tokens");
                }
            } else {
                assert_eq!(y, run(&b, Precision::F32), "{out}x{inp}, {t} tokens");
            }
            for m in [&f, &h] {
                assert_eq!(run(m, Precision::Bf16Streams), run(m, Precision::F32));
            }
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
                scalar::matmul_quant(&m, &x, t, &mut want);
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
    norm::layer_norm(&mut a, &w, &b, 1e-5);
    scalar::layer_norm(&mut s, &w, &b, 1e-5);
    close(&a, &s, 1e-5);
    // one row on the calling thread equals that row among many
    let mut one = x0[d..2 * d].to_vec();
    norm::layer_norm(&mut one, &w, &b, 1e-5);
    assert_eq!(one, a[d..2 * d]);
    // a group norm of 8 channels == a layer norm of them with that part of the affine
    let mut g = x0[..8].to_vec();
    norm::group_norm(&mut g, &w[..8], &b[..8], 64e-5);
    let mut expect = x0[..8].to_vec();
    scalar::layer_norm(&mut expect, &w[..8], &b[..8], 64e-5);
    close(&g, &expect, 1e-5);
}

/// The token shift of several streams at once equals each stream's alone; mixes apply
/// per channel.
#[test]
fn token_shifts_keep_streams_apart() {
    let d = 5;
    let xx = vals(6 * d, 70);
    let spans = [0..1, 1..4, 4..6];
    let mut states: Vec<Vec<f32>> = (0..3).map(|i| vals(2 * d, 71 + i)).collect();
    let mut want_states = states.clone();
    let mut sx = vec![0.0; 6 * d];
    let mut refs: Vec<&mut Vec<f32>> = states.iter_mut().collect();
    norm::token_shifts(&xx, &mut sx, d, &spans, &mut refs, d..2 * d);
    for (i, span) in spans.iter().enumerate() {
        let rows = span.start * d..span.end * d;
        let mut want = vec![0.0; rows.len()];
        norm::token_shift(&xx[rows.clone()], &mut want_states[i][d..], &mut want);
        assert_eq!(sx[rows], want[..], "stream {i}");
        // the first row's shift came from the stream's state, which became its last row
        assert_eq!(want_states[i][d..], xx[span.end * d - d..span.end * d]);
    }
    assert_eq!(states, want_states);
    let maa = vals(d, 80);
    let mut out = vec![0.0; 6 * d];
    norm::mix(&xx, &sx, &maa, &mut out);
    for (i, o) in out.iter().enumerate() {
        assert_eq!(*o, xx[i] + sx[i] * maa[i % d]);
    }
}

/// Every instruction set against the scalar twin (and alike, bit for bit); `then` sees
/// each head's outputs of each token once, after the recurrence; several streams at once
/// give each stream's bits; rows before `from` are not written.
#[test]
fn wkv_matches_scalar() {
    let mark: HeadThen = &|ti, c0, o| o.iter_mut().for_each(|v| *v = *v * 3.0 + (ti + c0) as f32);
    for (h, s, t) in [(3, 5, 4), (2, 64, 3), (1, 33, 2), (4, 16, 1)] {
        let d = h * s;
        let (r, k, v) = (vals(t * d, 8), vals(t * d, 9), vals(t * d, 10));
        let w: Vec<f32> = vals(t * d, 11).iter().map(|x| 0.5 + 0.4 * x).collect();
        let u = vals(d, 12);
        let st0 = vals(h * s * s, 13);
        let mut st_b = st0.clone();
        let mut ob = vec![0.0; t * d];
        scalar::wkv6(h, &r, &k, &v, &w, &u, &mut st_b, &mut ob);
        let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
        let whole = 0..t;
        let one = std::slice::from_ref(&whole);
        for isa in Isa::available() {
            let mut st_a = st0.clone();
            let mut oa = vec![0.0; t * d];
            let args = (&r[..], &k[..], &v[..], &w[..], &u[..]);
            let run = |st: &mut Vec<f32>, o: &mut [f32], from, then: Option<HeadThen>| {
                let (r, k, v, w, u) = args;
                wkv6_with(
                    isa,
                    h,
                    one,
                    r,
                    k,
                    v,
                    w,
                    u,
                    &mut [&mut st[..]],
                    o,
                    from,
                    then,
                )
            };
            run(&mut st_a, &mut oa, 0, None);
            close(&oa, &ob, 1e-5);
            close(&st_a, &st_b, 1e-5);
            let (mut st_m, mut om) = (st0.clone(), vec![0.0; t * d]);
            run(&mut st_m, &mut om, 0, Some(mark));
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
            // outputs from row `from` on only; the state takes every row
            let (mut st_f, mut of) = (st0.clone(), vec![f32::NAN; t * d]);
            run(&mut st_f, &mut of, t - 1, None);
            assert_eq!(st_f, st_a);
            assert_eq!(of[(t - 1) * d..], oa[(t - 1) * d..]);
            assert!(of[..(t - 1) * d].iter().all(|v| v.is_nan()));
            // every instruction set gives the same bits
            match &first {
                None => first = Some((oa.clone(), st_a.clone())),
                Some((o, st)) => assert!(o == &oa && st == &st_a, "{isa:?}"),
            }
            // the rows as two streams, each from the same start: stream 2's bits are
            // those of its rows alone
            if t >= 2 {
                let spans = [0..1, 1..t];
                let (mut s1, mut s2) = (st0.clone(), st0.clone());
                let mut o2 = vec![0.0; t * d];
                wkv6_with(
                    isa,
                    h,
                    &spans,
                    &r,
                    &k,
                    &v,
                    &w,
                    &u,
                    &mut [&mut s1, &mut s2],
                    &mut o2,
                    0,
                    None,
                );
                let rows = d..t * d;
                let (mut s_alone, mut o_alone) = (st0.clone(), vec![0.0; (t - 1) * d]);
                let (r1, k1, v1, w1) = (
                    &r[rows.clone()],
                    &k[rows.clone()],
                    &v[rows.clone()],
                    &w[rows.clone()],
                );
                wkv6_with(
                    isa,
                    h,
                    std::slice::from_ref(&(0..t - 1)),
                    r1,
                    k1,
                    v1,
                    w1,
                    &u,
                    &mut [&mut s_alone],
                    &mut o_alone,
                    0,
                    None,
                );
                assert_eq!(o2[rows], o_alone[..], "{isa:?} two streams");
                assert_eq!(s2, s_alone);
            }
        }
    }
}
