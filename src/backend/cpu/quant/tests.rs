//! The quantized kernels against their scalar twin, bit for bit, on every instruction set.

use super::acts::{Lines, QActs};
use super::dots::{dot, dots};
use super::panel::Panel;
use super::rows::{q8_index, qrow as row, qrows, Act, QRow, QTok};
use crate::backend::cpu::scalar::quant_dot as dot_scalar;
use crate::backend::cpu::tests::vals;
use crate::backend::cpu::tuning::{
    PANEL_ROWS, QUANT_PANEL_TOKENS as PANEL_TOKENS, QUANT_PARALLEL_FROM as PARALLEL_FROM,
};
use crate::isa::Isa;
use crate::tensor::quant::{quantize, Quant, BLOCK};
use crate::tensor::Matrix;

/// Every token's codes start on a cache line (whole lines a token), and growing the
/// buffer again gives zeros past the old length.
#[test]
fn activation_codes_start_on_cache_lines() {
    let x = vals(3 * 192, 2);
    for act in [Act::I16, Act::I8] {
        let mut a = QActs::default();
        a.quantize(Isa::detect(), &x, 192, 1.0, act);
        for ti in 0..3 {
            let tok = a.token(ti);
            let p = match act {
                Act::I16 => tok.q16.as_ptr() as usize,
                Act::I8 => tok.q8.as_ptr() as usize,
            };
            assert_eq!(p % 64, 0, "{act:?} token {ti}");
        }
    }
    let mut l = Lines::<i16>::default();
    l.resize(40);
    l.fill(7);
    l.resize(3);
    l.resize(40);
    assert_eq!((l[2], l[3], l[39]), (7, 0, 0));
}

#[test]
fn activations_round_within_half_a_step() {
    let n = 192;
    let mut x = vals(2 * n, 1);
    x[70] = 9.0; // one block with an outlier
    x[128..192].iter_mut().for_each(|v| *v = 0.0); // and one of zeros
    for act in [Act::I16, Act::I8] {
        let mut a = QActs::default();
        a.quantize(Isa::Portable, &x, n, 1.0, act);
        for ti in 0..2 {
            let tok = a.token(ti);
            let q = |i: usize| match act {
                Act::I16 => tok.q16[i] as i32,
                Act::I8 => tok.q8[q8_index(i / BLOCK, i % BLOCK)] as i32,
            };
            for (i, &v) in x[ti * n..(ti + 1) * n].iter().enumerate() {
                let s = tok.scale[i / BLOCK];
                let err = (q(i) as f32 * s - v).abs();
                assert!(err <= s * 0.5 + 1e-9, "{act:?} {ti} {i}");
            }
            if act == Act::I8 {
                // n = 192: a whole pair, then block 2 with zeros beside it
                assert_eq!((tok.q8.len(), tok.block_corr.len()), (256, 3));
                assert!((0..BLOCK).all(|i| tok.q8[q8_index(3, i)] == 0));
                for (b, &c) in tok.block_corr.iter().enumerate() {
                    let sum: i32 = (0..BLOCK).map(|i| q(b * BLOCK + i)).sum();
                    assert_eq!(c, -128 * sum, "block {b}");
                }
                // pair order: block 0's first half, block 1's, block 0's second half
                let v = |b: usize, i: usize| q(b * BLOCK + i);
                assert_eq!(
                    tok.q8[..3].iter().map(|&c| c as i32).collect::<Vec<_>>(),
                    [v(0, 0), v(0, 1), v(0, 2)]
                );
                assert_eq!(tok.q8[32] as i32, v(1, 0));
                assert_eq!(tok.q8[64] as i32, v(0, 32));
                assert_eq!(tok.q8[127] as i32, v(1, 63));
                assert_eq!(tok.q8[128] as i32, v(2, 0));
            }
            assert!((128..192).all(|i| ti == 1 || q(i) == 0));
        }
        let tok = a.token(0);
        assert_eq!(tok.scale[1], 9.0 / act.max());
        assert_eq!(tok.scale[2], 0.0);
    }
    let mut a = QActs::default();
    a.quantize(Isa::Portable, &x, n, 1.0, Act::I8);
    assert_eq!(a.token(0).q8[q8_index(1, 6)], 127);
    a.quantize(Isa::Portable, &x, n, 1.0, Act::I16);
    assert_eq!(a.token(0).q16[70], i16::MAX);
    assert!(a.token(1).q8.is_empty() && a.token(1).block_corr.is_empty());
}

/// The AVX-512 quantizer gives the scalar twin's codes, serial and in parallel (70
/// tokens of 17 blocks are over [`PARALLEL_FROM`]), odd block counts included; ties
/// go to even.
#[test]
fn every_isa_rounds_activations_alike() {
    for (n, t) in [(192, 3), (17 * BLOCK, 70)] {
        assert_eq!(t * n >= PARALLEL_FROM, t == 70);
        let mut x = vals(t * n, 4);
        x[..4].copy_from_slice(&[127.0, 2.5, -3.5, 0.5]); // a step of exactly 1
        for act in [Act::I16, Act::I8] {
            let mut want = QActs::default();
            want.quantize(Isa::Portable, &x, n, 0.5, act);
            if act == Act::I8 {
                let q = |i| want.token(0).q8[q8_index(0, i)];
                assert_eq!([q(0), q(1), q(2), q(3)], [127, 2, -4, 0]);
            }
            for isa in Isa::available() {
                let mut got = QActs::default();
                got.quantize(isa, &x, n, 0.5, act);
                assert_eq!(got.scale[..], want.scale[..], "{isa:?} {act:?} {n}");
                assert_eq!(got.q16[..], want.q16[..], "{isa:?} {act:?} {n}");
                assert_eq!(got.q8[..], want.q8[..], "{isa:?} {act:?} {n}");
                assert_eq!(
                    got.block_corr[..],
                    want.block_corr[..],
                    "{isa:?} {act:?} {n}"
                );
            }
        }
    }
}

/// `W [rows, n]` and `x [t, n]` from `seed`, the first block of the last row and of the
/// last token all -1: the extreme codes, -127 times the largest activation code.
fn case(rows: usize, n: usize, t: usize, seed: u32) -> (Matrix, Vec<f32>) {
    let mut wv = vals(rows * n, seed);
    let mut xv = vals(t * n, seed + 1);
    for (v, len) in [(&mut wv, rows), (&mut xv, t)] {
        v[(len - 1) * n..(len - 1) * n + BLOCK].fill(-1.0);
    }
    (Matrix::from_f32(rows, n, wv), xv)
}

/// The unit of a format's codes and how its activations are rounded (the backend's
/// `code_unit`).
fn rounding(q: Quant) -> (f32, Act) {
    match q {
        Quant::Int8 => (1.0, Act::I16),
        Quant::Nf4 => (1.0 / 127.0, Act::I8),
    }
}

/// Every kernel against the scalar twin, bit for bit, including the extreme codes
/// ([`case`]) and block counts that end a class early (3, 17 and 33 blocks), one row at
/// a time ([`dot`]) and all of them in one call ([`dots`]); and the scalar twin against
/// the product of the dequantized weights: apart from f32 rounding, it differs by the
/// activations' rounding, at most half a step (`absmax / max code`) times each `|w|`.
#[test]
fn kernels_match_the_scalar_twin() {
    for (rows, n) in [
        (4, 64),
        (5, 192),
        (8, 1024),
        (3, 17 * BLOCK),
        (2, 33 * BLOCK),
    ] {
        let (base, xv) = case(rows, n, 4, 2);
        for q in [Quant::Int8, Quant::Nf4] {
            let m = quantize(&base, q);
            let (unit, act) = rounding(q);
            let mut acts = QActs::default();
            acts.quantize(Isa::Portable, &xv, n, unit, act);
            let deq = m.to_f32();
            for ti in 0..4 {
                let want: Vec<f32> = (0..rows)
                    .map(|r| dot_scalar(row(&m, r), acts.token(ti)))
                    .collect();
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; rows];
                    dots(isa, qrows(&m, 0..rows), acts.token(ti), &mut got);
                    assert_eq!(got, want, "dots: {q:?} {isa:?} {n} {ti}");
                }
            }
            for r in 0..rows {
                for ti in 0..4 {
                    let want = dot_scalar(row(&m, r), acts.token(ti));
                    for isa in Isa::available() {
                        let got = dot(isa, row(&m, r), acts.token(ti));
                        assert_eq!(got, want, "{q:?} {isa:?} {n} {r} {ti}");
                    }
                    let (wr, xr) = (&deq[r * n..(r + 1) * n], &xv[ti * n..(ti + 1) * n]);
                    let exact: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let mut bound = 0.0;
                    for (wb, xb) in wr.chunks(BLOCK).zip(xr.chunks(BLOCK)) {
                        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        let step = (amax / act.max()) as f64;
                        bound += wb.iter().map(|w| w.abs() as f64 * step / 2.0).sum::<f64>();
                    }
                    let mag: f64 = wr
                        .iter()
                        .zip(xr)
                        .map(|(a, b)| (*a as f64 * *b as f64).abs())
                        .sum();
                    assert!(
                        (want as f64 - exact).abs() <= bound + 1e-6 * mag,
                        "{q:?} {r} {ti}: {want} vs {exact}"
                    );
                }
            }
        }
    }
}

/// The panel kernel gives every (row, token) pair exactly what the one-token kernel
/// gives it: 1 to 32 rows, 1 to 8 tokens, block counts that end a class early, and
/// rows of extreme codes.
#[test]
fn panels_match_the_one_token_kernel() {
    let isa = Isa::detect();
    if !Panel::runs(isa, true) {
        eprintln!("no panel kernel on this CPU: nothing to compare");
        return;
    }
    for (rows, n, t) in [
        (32, 1024, 8),
        (7, 192, 5),
        (23, 17 * BLOCK, 7),
        (16, 64, 3),
        (1, 33 * BLOCK, 1),
    ] {
        let (base, xv) = case(rows, n, t, 5);
        for q in [Quant::Int8, Quant::Nf4] {
            let m = quantize(&base, q);
            let (unit, act) = rounding(q);
            let mut acts = QActs::default();
            acts.quantize(isa, &xv, n, unit, act);
            let stored: Vec<QRow> = (0..rows).map(|r| row(&m, r)).collect();
            let mut panel = Panel::default();
            panel.pack(isa, &stored);
            let tokens: Vec<QTok> = (0..t).map(|j| acts.token(j)).collect();
            let mut out = [[f32::NAN; PANEL_ROWS]; PANEL_TOKENS];
            let base = out.as_mut_ptr() as *mut f32;
            // SAFETY: row j of `out` holds 32 f32, as many as a panel's rows.
            unsafe {
                panel.multiply(
                    &acts,
                    0,
                    t,
                    |j| base.add(j * PANEL_ROWS),
                    (std::ptr::null(), 0),
                )
            };
            for (j, got) in out[..t].iter().enumerate() {
                for (r, &v) in got[..rows].iter().enumerate() {
                    let want = dot(isa, stored[r], tokens[j]);
                    assert_eq!(v, want, "{q:?} {n}: row {r} token {j}");
                }
            }
        }
    }
}

/// int8 and nf4 stored in panels give the bits of the same rows stored row after row, at
/// every token count and precision (partly empty last panels, widths of fewer blocks than
/// classes): the integer panel kernel (the scalar twin's bits), and for int8 at bf16
/// precision from four tokens the bf16 panels, the panels rounded to bf16 as stored.
#[test]
fn stored_panels_give_the_bits_of_rows() {
    use crate::backend::cpu::matmul_with;
    use crate::backend::cpu::plan::{kernel, Kernel};
    use crate::backend::cpu::scalar::matmul_quant;
    use crate::backend::Precision;
    use crate::tensor::panels::{nf4_to_panels, q8_to_panels};
    use crate::tensor::Data;
    let isa = Isa::detect();
    for quant in [Quant::Int8, Quant::Nf4] {
        if !Panel::runs(isa, quant == Quant::Nf4) {
            continue;
        }
        for (out, inp) in [(7, 128), (33, 192), (40, 17 * 64), (64, 2048)] {
            let m = quantize(&Matrix::from_f32(out, inp, vals(out * inp, 71)), quant);
            let data = match &m.data {
                Data::Q8(q) => Data::Q8Panels(q8_to_panels(q, out, inp)),
                Data::Nf4(q) => Data::Nf4Panels(nf4_to_panels(q, out, inp)),
                _ => unreachable!(),
            };
            let p = Matrix {
                rows: out,
                cols: inp,
                data,
            };
            for t in [1, 2, 3, 4, 7, 8, 9, 16, 19] {
                let x = vals(t * inp, 72);
                let mut want = vec![0.0; t * out];
                matmul_quant(&m, &x, t, &mut want);
                for prec in [Precision::F32, Precision::Bf16, Precision::Bf16Streams] {
                    let mut y = vec![0.0; t * out];
                    matmul_with(isa, prec, &p, &x, t, &mut y);
                    let at = format!("{quant:?} {out}x{inp}, {t} tokens, {prec:?}");
                    if kernel(isa, prec, &m, t) == Kernel::Bf16Panels {
                        assert_eq!(kernel(isa, prec, &p, t), Kernel::Bf16Panels, "{at}");
                        let mut rows = vec![0.0; t * out];
                        matmul_with(isa, prec, &m, &x, t, &mut rows);
                        assert_eq!(y, rows, "{at}");
                    } else {
                        assert_eq!(kernel(isa, prec, &p, t), Kernel::QuantPanels, "{at}");
                        assert_eq!(y, want, "{at}");
                    }
                }
            }
        }
    }
}
