//! The OpenCL backend: every operation against its scalar reference (and the CPU backend
//! against the same), whole models against the golden files, the CLI's output against the
//! CPU's, and the launches and transfers of a token. Runs with `--features opencl` on any
//! OpenCL platform (CI uses PoCL, which runs OpenCL on the CPU).
#![cfg(feature = "opencl")]
// The helpers mirror the Backend operations they drive, arguments and all.
#![allow(clippy::too_many_arguments)]
// Spans are lists of token ranges, one per stream; a list of one is a single stream.
#![allow(clippy::single_range_in_vec_init)]

mod common;
use common::*;
use rwkv::backend::cpu::{scalar, Cpu};
use rwkv::backend::opencl::{DeviceSpec, Ocl};
use rwkv::backend::{
    Backend, Decay, Lora, Mix, Norm, NormShift, Precision, Product, RowProduct, Rows, RowsMut,
    StateData, StateShape, Then, Up, Wkv6, Wkv7,
};
use rwkv::model::LoadOptions;
use rwkv::tensor::quant::{quantize, Quant};
use rwkv::tensor::{Buf, DType, Data, Matrix};
use rwkv::{Logits, Model};

fn device() -> Ocl {
    let spec: DeviceSpec = "opencl".parse().unwrap();
    Ocl::open(spec)
        .expect("an OpenCL platform (CI installs PoCL)")
        .unwrap()
}

fn on_device(path: &std::path::Path) -> Model {
    let opts = LoadOptions {
        device: "opencl".parse().unwrap(),
        ..LoadOptions::default()
    };
    Model::load_with(path, opts).unwrap()
}

/// `|a - b| <= tol * (1 + |b|)` everywhere.
fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what} at {i}: {x} vs {y}"
        );
    }
}

fn put<B: Backend>(be: &B, v: &[f32]) -> B::Tensor {
    be.vector(v).unwrap()
}

fn get<B: Backend>(be: &B, t: &B::Tensor, n: usize) -> Vec<f32> {
    let mut out = Vec::new();
    be.read(Rows::new(t, 0, 1, n), &mut out).unwrap();
    out
}

fn space<B: Backend>(be: &B, n: usize) -> B::Tensor {
    let mut t = be.tensor();
    be.reserve(&mut t, n).unwrap();
    t
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Matrices `[rows, cols]` in every format the width allows (int8 and nf4 need multiples
/// of 64), from the same values.
fn formats(rows: usize, cols: usize, seed: u32) -> Vec<Matrix> {
    let v = vals(rows * cols, seed);
    let f32m = Matrix::from_f32(rows, cols, v.clone());
    let mut out = vec![
        Matrix {
            rows,
            cols,
            data: Data::F16(Buf::Owned(
                v.iter().map(|&x| half::f16::from_f32(x)).collect(),
            )),
        },
        Matrix {
            rows,
            cols,
            data: Data::BF16(Buf::Owned(
                v.iter().map(|&x| half::bf16::from_f32(x)).collect(),
            )),
        },
    ];
    if cols.is_multiple_of(64) {
        out.push(quantize(&f32m, Quant::Int8));
        out.push(quantize(&f32m, Quant::Nf4));
    }
    out.push(f32m);
    out
}

/// The eleven steps, by index, with their reference on output (t, o) of a product `rows`
/// wide: `(y, operand a, b, c) -> (output, new a)`.
fn step_ref(
    step: usize,
    y: f32,
    a: &[f32],
    b: &[f32],
    c: &[f32],
    t: usize,
    o: usize,
    rows: usize,
) -> (f32, Option<f32>) {
    let at = t * rows + o;
    match step {
        0 => (y, None),
        1 => (y.tanh(), None),
        2 => (sigmoid(y), None),
        3 => (y * sigmoid(y), None),
        4 => (y.max(0.0) * y.max(0.0), None),
        5 => ((-(a[o] + y).exp()).exp(), None),
        6 => ((-0.606531 * sigmoid(a[o] + y)).exp(), None),
        7 => (sigmoid(a[o] + y), None),
        8 => (a[at] + b[at] * (c[o] + y), None),
        9 => (y, Some(a[at] + y)),
        _ => (y * b[at], Some(a[at] + y * b[at])),
    }
}

/// Run one product call of several jobs (one per matrix, each with step `steps[i]`) on
/// `be`: the outputs and each job's operand `a` afterwards.
fn products_on<B: Backend>(
    be: &B,
    mats: &[Matrix],
    xs: &[Vec<f32>],
    ops: &[[Vec<f32>; 3]],
    steps: &[usize],
    t: usize,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let ws: Vec<B::Matrix> = mats.iter().map(|m| be.matrix(clone(m)).unwrap()).collect();
    let xt: Vec<B::Tensor> = xs.iter().map(|x| put(be, x)).collect();
    let mut yt: Vec<B::Tensor> = mats.iter().map(|m| space(be, t * m.rows)).collect();
    let mut at: Vec<B::Tensor> = ops.iter().map(|o| put(be, &o[0])).collect();
    let bt: Vec<B::Tensor> = ops.iter().map(|o| put(be, &o[1])).collect();
    let ct: Vec<B::Tensor> = ops.iter().map(|o| put(be, &o[2])).collect();
    {
        let mut jobs: Vec<Product<B>> = Vec::new();
        let parts = ws
            .iter()
            .zip(&xt)
            .zip(yt.iter_mut())
            .zip(at.iter_mut())
            .zip(bt.iter().zip(&ct));
        for (i, ((((w, x), y), a), (b, c))) in parts.enumerate() {
            let (rows, cols) = (mats[i].rows, mats[i].cols);
            let then = match steps[i] {
                0 => Then::None,
                1 => Then::Tanh,
                2 => Then::Sigmoid,
                3 => Then::Silu,
                4 => Then::ReluSquared,
                5 => Then::ExpNegExp(&*a),
                6 => Then::SigmoidDecay(&*a),
                7 => Then::SigmoidPlus(&*a),
                8 => Then::Mix {
                    xx: Rows::new(&*a, 0, t, rows),
                    sx: Rows::new(b, 0, t, rows),
                    maa: c,
                },
                9 => Then::Residual(RowsMut::new(a, 0, t, rows)),
                _ => Then::GatedResidual {
                    gate: Rows::new(b, 0, t, rows),
                    x: RowsMut::new(a, 0, t, rows),
                },
            };
            jobs.push(Product {
                w,
                x: Rows::new(x, 0, t, cols),
                y: RowsMut::new(y, 0, t, rows),
                then,
            });
        }
        be.products(Precision::F32, &mut jobs).unwrap();
    }
    let ys = mats
        .iter()
        .zip(&yt)
        .map(|(m, y)| get(be, y, t * m.rows))
        .collect();
    let as_ = ops
        .iter()
        .zip(&at)
        .map(|(o, a)| get(be, a, o[0].len()))
        .collect();
    (ys, as_)
}

fn clone(m: &Matrix) -> Matrix {
    let (rows, cols) = (m.rows, m.cols);
    match &m.data {
        Data::F32(b) => Matrix::from_f32(rows, cols, b.to_vec()),
        Data::F16(b) => Matrix {
            rows,
            cols,
            data: Data::F16(Buf::Owned(b.to_vec())),
        },
        Data::BF16(b) => Matrix {
            rows,
            cols,
            data: Data::BF16(Buf::Owned(b.to_vec())),
        },
        Data::Q8(_) | Data::Q8Panels(_) | Data::Nf4(_) | Data::Nf4Panels(_) => {
            let f = Matrix::from_f32(rows, cols, m.to_f32());
            let q = if m.dtype() == DType::Int8 {
                Quant::Int8
            } else {
                Quant::Nf4
            };
            let back = quantize(&f, q);
            assert_eq!(back.to_f32(), m.to_f32(), "requantizing is exact");
            back
        }
    }
}

/// Every format, every step, several jobs of mixed formats in one call, token counts on
/// both sides of a work-group's eight, widths that are not multiples of 8: the device
/// against the scalar reference (dequantized weights in f32), and the CPU against its own
/// (its int8 and nf4 products round the activations to integers first).
#[test]
fn products_match_the_reference_for_every_format_and_step() {
    let o = device();
    let mut case = 0;
    for (rows, cols) in [(19, 192), (7, 37), (65, 64)] {
        let mats = formats(rows, cols, 1 + rows as u32);
        for t in [1, 3, 9, 17] {
            case += 1;
            let steps: Vec<usize> = (0..mats.len()).map(|i| (i * 3 + case) % 11).collect();
            let xs: Vec<Vec<f32>> = mats
                .iter()
                .enumerate()
                .map(|(i, m)| vals(t * m.cols, 50 + i as u32))
                .collect();
            let ops: Vec<[Vec<f32>; 3]> = (0..mats.len())
                .map(|i| {
                    let s = 60 + 3 * i as u32;
                    [vals(t * rows, s), vals(t * rows, s + 1), vals(rows, s + 2)]
                })
                .collect();
            // the reference: f32 products of the stored (dequantized) weights; the CPU's
            // twin rounds the activations of int8 and nf4 products as its kernels do
            let reference = |cpu: bool| {
                let mut want = Vec::new();
                let mut want_a = Vec::new();
                for (i, m) in mats.iter().enumerate() {
                    let mut y = vec![0.0; t * rows];
                    if cpu && matches!(m.dtype(), DType::Int8 | DType::Nf4) {
                        scalar::matmul_quant(m, &xs[i], t, &mut y);
                    } else {
                        scalar::matmul(m, &xs[i], t, &mut y);
                    }
                    let [a, b, c] = &ops[i];
                    let mut a2 = a.clone();
                    for ti in 0..t {
                        for oo in 0..rows {
                            let (v, na) =
                                step_ref(steps[i], y[ti * rows + oo], a, b, c, ti, oo, rows);
                            y[ti * rows + oo] = v;
                            if let Some(na) = na {
                                a2[ti * rows + oo] = na;
                            }
                        }
                    }
                    want.push(y);
                    want_a.push(a2);
                }
                (want, want_a)
            };
            let (want, want_a) = reference(false);
            let (want_cpu, want_cpu_a) = reference(true);
            let (dev, dev_a) = products_on(&o, &mats, &xs, &ops, &steps, t);
            let (cpu, cpu_a) = products_on(&Cpu::default(), &mats, &xs, &ops, &steps, t);
            for (i, m) in mats.iter().enumerate() {
                let what = format!("{:?} {rows}x{cols} t={t} step {}", m.dtype(), steps[i]);
                close(&format!("device {what}"), &dev[i], &want[i], 1e-4);
                close(&format!("device a {what}"), &dev_a[i], &want_a[i], 1e-4);
                close(&format!("cpu {what}"), &cpu[i], &want_cpu[i], 1e-4);
                close(&format!("cpu a {what}"), &cpu_a[i], &want_cpu_a[i], 1e-4);
            }
        }
    }
}

/// The norm with its token shift and mixes, for one stream of three rows (mixes from row
/// 1) and for three streams of 1, 2 and 1 rows: each backend against the reference.
#[test]
fn norm_shift_matches_the_reference() {
    let o = device();
    let d = 96;
    let shape = StateShape {
        layers: 1,
        embd: d,
        heads: 1,
        head_size: 0,
        recurrence: Default::default(),
    };
    let (w, b) = (vals(d, 3), vals(d, 4));
    let maas = [vals(d, 5), vals(d, 6)];
    let x = vals(4 * d, 7);
    for spans in [vec![0..3], vec![0..1, 1..3, 3..4]] {
        let t = spans.last().unwrap().end;
        let from = if spans.len() == 1 { 1 } else { 0 };
        let states: Vec<Vec<f32>> = (0..spans.len())
            .map(|i| vals(2 * d, 10 + i as u32))
            .collect();
        // the reference
        let mut xx = x[..t * d].to_vec();
        scalar::layer_norm(&mut xx, &w, &b, 1e-5);
        let mut sx = vec![0.0; t * d];
        let mut want_states = states.clone();
        for (span, st) in spans.iter().zip(want_states.iter_mut()) {
            for r in span.clone() {
                for c in 0..d {
                    let prev = if r == span.start {
                        st[c]
                    } else {
                        xx[(r - 1) * d + c]
                    };
                    sx[r * d + c] = prev - xx[r * d + c];
                }
            }
            st[..d].copy_from_slice(&xx[(span.end - 1) * d..span.end * d]);
        }
        let mix = |m: &[f32]| -> Vec<f32> {
            (from * d..t * d)
                .map(|i| xx[i] + sx[i] * m[i % d])
                .collect()
        };
        let want_mix = [mix(&maas[0]), mix(&maas[1])];
        fn run<B: Backend>(
            be: &B,
            x: &[f32],
            w: &[f32],
            b: &[f32],
            maas: &[Vec<f32>; 2],
            states: &[Vec<f32>],
            spans: &[std::ops::Range<usize>],
            shape: StateShape,
            from: usize,
        ) -> Vec<Vec<f32>> {
            let (d, t) = (shape.embd, spans.last().unwrap().end);
            let (xt, wt, bt) = (put(be, &x[..t * d]), put(be, w), put(be, b));
            let (m0, m1) = (put(be, &maas[0]), put(be, &maas[1]));
            let (mut xx, mut sx) = (space(be, t * d), space(be, t * d));
            let (mut o0, mut o1) = (space(be, t * d), space(be, t * d));
            let mut data: Vec<StateData> =
                states.iter().map(|s| StateData::Host(s.clone())).collect();
            let mut sts: Vec<&mut B::State> =
                data.iter_mut().map(|s| be.state_mut(s).unwrap()).collect();
            let mut batch = be.batch();
            be.set_batch(&mut batch, spans, &sts).unwrap();
            let n = t - from;
            be.norm_shift(
                NormShift {
                    x: Rows::new(&xt, 0, t, d),
                    ln: Norm {
                        w: &wt,
                        b: &bt,
                        eps: 1e-5,
                    },
                    shift: 0..d,
                    xx: RowsMut::new(&mut xx, 0, t, d),
                    sx: RowsMut::new(&mut sx, 0, t, d),
                    from,
                    mixes: &mut [
                        Mix {
                            maa: &m0,
                            out: RowsMut::new(&mut o0, 0, n, d),
                        },
                        Mix {
                            maa: &m1,
                            out: RowsMut::new(&mut o1, 0, n, d),
                        },
                    ],
                },
                &batch,
                &mut sts,
            )
            .unwrap();
            drop(sts);
            let mut out = vec![
                get(be, &xx, t * d),
                get(be, &sx, t * d),
                get(be, &o0, n * d),
                get(be, &o1, n * d),
            ];
            out.extend(data.iter().map(|s| s.to_host().unwrap()));
            out
        }
        for (name, got) in [
            (
                "device",
                run(&o, &x, &w, &b, &maas, &states, &spans, shape, from),
            ),
            (
                "cpu",
                run(
                    &Cpu::default(),
                    &x,
                    &w,
                    &b,
                    &maas,
                    &states,
                    &spans,
                    shape,
                    from,
                ),
            ),
        ] {
            let what = format!("{name} {spans:?}");
            close(&format!("{what} xx"), &got[0], &xx, 1e-4);
            close(&format!("{what} sx"), &got[1], &sx, 1e-4);
            close(&format!("{what} mix 0"), &got[2], &want_mix[0], 1e-4);
            close(&format!("{what} mix 1"), &got[3], &want_mix[1], 1e-4);
            for (i, st) in want_states.iter().enumerate() {
                close(&format!("{what} state {i}"), &got[4 + i], st, 1e-4);
            }
        }
    }
}

/// A LoRA with five up-projections and the mix step, as RWKV-6's: each backend against the
/// reference.
#[test]
fn lora_matches_the_reference() {
    let o = device();
    let (d, m, t) = (128, 16, 3);
    let down = Matrix {
        rows: 5 * m,
        cols: d,
        data: Data::BF16(Buf::Owned(
            vals(5 * m * d, 1)
                .iter()
                .map(|&v| half::bf16::from_f32(v))
                .collect(),
        )),
    };
    let ups: Vec<Matrix> = (0..5)
        .map(|j| Matrix::from_f32(d, m, vals(d * m, 10 + j)))
        .collect();
    let x = vals(t * d, 2);
    let (xx, sx) = (vals(t * d, 3), vals(t * d, 4));
    let maas: Vec<Vec<f32>> = (0..5).map(|j| vals(d, 20 + j)).collect();
    let mut h = vec![0.0; t * 5 * m];
    scalar::matmul(&down, &x, t, &mut h);
    h.iter_mut().for_each(|v| *v = v.tanh());
    let want: Vec<Vec<f32>> = (0..5)
        .map(|j| {
            let part: Vec<f32> = (0..t)
                .flat_map(|ti| h[ti * 5 * m + j * m..ti * 5 * m + (j + 1) * m].to_vec())
                .collect();
            let mut y = vec![0.0; t * d];
            scalar::matmul(&ups[j], &part, t, &mut y);
            (0..t * d)
                .map(|i| xx[i] + sx[i] * (maas[j][i % d] + y[i]))
                .collect()
        })
        .collect();
    fn run<B: Backend>(
        be: &B,
        down: &Matrix,
        ups: &[Matrix],
        x: &[f32],
        xx: &[f32],
        sx: &[f32],
        maas: &[Vec<f32>],
        t: usize,
        m: usize,
    ) -> Vec<Vec<f32>> {
        let d = down.cols;
        let dw = be.matrix(clone(down)).unwrap();
        let uw: Vec<B::Matrix> = ups.iter().map(|u| be.matrix(clone(u)).unwrap()).collect();
        let (xt, xxt, sxt) = (put(be, x), put(be, xx), put(be, sx));
        let mt: Vec<B::Tensor> = maas.iter().map(|v| put(be, v)).collect();
        let mut ys: Vec<B::Tensor> = (0..5).map(|_| space(be, t * d)).collect();
        let mut hidden = be.tensor();
        {
            let mut ups: Vec<Up<B>> = uw
                .iter()
                .zip(ys.iter_mut())
                .zip(&mt)
                .enumerate()
                .map(|(j, ((w, y), maa))| Up {
                    w,
                    from: j * m,
                    y: RowsMut::new(y, 0, t, d),
                    then: Then::Mix {
                        xx: Rows::new(&xxt, 0, t, d),
                        sx: Rows::new(&sxt, 0, t, d),
                        maa,
                    },
                })
                .collect();
            be.lora(
                Precision::F32,
                Lora {
                    x: Rows::new(&xt, 0, t, d),
                    down: &dw,
                    act: Then::Tanh,
                    hidden: &mut hidden,
                    ups: &mut ups,
                },
            )
            .unwrap();
        }
        ys.iter().map(|y| get(be, y, t * d)).collect()
    }
    for (name, got) in [
        ("device", run(&o, &down, &ups, &x, &xx, &sx, &maas, t, m)),
        (
            "cpu",
            run(&Cpu::default(), &down, &ups, &x, &xx, &sx, &maas, t, m),
        ),
    ] {
        for j in 0..5 {
            close(&format!("{name} up {j}"), &got[j], &want[j], 1e-4);
        }
    }
}

/// The RWKV-6 recurrence with its decay product, GroupNorm and gate, rows from 1 on: each
/// backend against the reference (the scalar recurrence), outputs and state; then with
/// RWKV-5.2's fixed decay.
#[test]
fn wkv6_matches_the_reference() {
    wkv6_case(false);
    wkv6_case(true);
}

fn wkv6_case(fixed: bool) {
    let o = device();
    let (h, s, t, k) = (2, 64, 3, 32);
    let d = h * s;
    let (r, kk, v) = (vals(t * d, 1), vals(t * d, 2), vals(t * d, 3));
    let dl = vals(t * k, 4);
    let up = Matrix {
        rows: d,
        cols: k,
        data: Data::BF16(Buf::Owned(
            vals(d * k, 5)
                .iter()
                .map(|&x| half::bf16::from_f32(x * 0.3))
                .collect(),
        )),
    };
    let bias: Vec<f32> = vals(d, 6).iter().map(|x| x - 1.0).collect();
    let u = vals(d, 7);
    let (lw, lb, g) = (vals(d, 8), vals(d, 9), vals(t * d, 10));
    let st0 = vals(d * s, 11);
    let from = 1;
    // the reference
    let mut w = vec![0.0; t * d];
    if !fixed {
        scalar::matmul(&up, &dl, t, &mut w);
    }
    for (i, x) in w.iter_mut().enumerate() {
        *x = (-(bias[i % d] + *x).exp()).exp();
    }
    let (mut st, mut out) = (st0.clone(), vec![0.0; t * d]);
    scalar::wkv6(h, &r, &kk, &v, &w, &u, &mut st, &mut out);
    for ti in from..t {
        for hh in 0..h {
            let c = ti * d + hh * s..ti * d + (hh + 1) * s;
            scalar::layer_norm(
                &mut out[c.clone()],
                &lw[hh * s..(hh + 1) * s],
                &lb[hh * s..(hh + 1) * s],
                64e-5,
            );
            for (i, x) in out[c].iter_mut().enumerate() {
                *x *= g[ti * d + hh * s + i];
            }
        }
    }
    fn run<B: Backend>(
        be: &B,
        a: [&[f32]; 10],
        up: &Matrix,
        st0: &[f32],
        h: usize,
        t: usize,
        from: usize,
        fixed: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let [r, kk, v, dl, bias, u, lw, lb, g, _] = a;
        let d = u.len();
        let k = dl.len() / t;
        let shape = StateShape {
            layers: 1,
            embd: 0,
            heads: h,
            head_size: d / h,
            recurrence: Default::default(),
        };
        let upm = be.matrix(clone(up)).unwrap();
        let ts: Vec<B::Tensor> = [r, kk, v, dl, bias, u, lw, lb, g]
            .iter()
            .map(|x| put(be, x))
            .collect();
        let (mut w, mut out) = (space(be, t * d), space(be, t * d));
        let mut data = StateData::Host(st0.to_vec());
        let st = be.state_mut(&mut data).unwrap();
        let mut sts = [st];
        let mut batch = be.batch();
        be.set_batch(&mut batch, &[0..t], &sts).unwrap();
        be.wkv6(
            Precision::F32,
            Wkv6 {
                heads: h,
                r: Rows::new(&ts[0], 0, t, d),
                k: Rows::new(&ts[1], 0, t, d),
                v: Rows::new(&ts[2], 0, t, d),
                decay: if fixed {
                    Decay::Fixed
                } else {
                    Decay::Lora {
                        hidden: Rows::new(&ts[3], 0, t, k),
                        up: &upm,
                    }
                },
                decay_bias: &ts[4],
                w: RowsMut::new(&mut w, 0, t, d),
                u: &ts[5],
                state: 0..shape.wkv_len(),
                out: RowsMut::new(&mut out, 0, t, d),
                ln_x: Norm {
                    w: &ts[6],
                    b: &ts[7],
                    eps: 64e-5,
                },
                g: Rows::new(&ts[8], from, t - from, d),
                from,
            },
            &batch,
            &mut sts,
        )
        .unwrap();
        (
            get(be, &out, t * d)[from * d..].to_vec(),
            data.to_host().unwrap(),
        )
    }
    let args = [&r[..], &kk, &v, &dl, &bias, &u, &lw, &lb, &g, &[]];
    for (name, (o_out, o_st)) in [
        ("device", run(&o, args, &up, &st0, h, t, from, fixed)),
        (
            "cpu",
            run(&Cpu::default(), args, &up, &st0, h, t, from, fixed),
        ),
    ] {
        close(
            &format!("{name} fixed {fixed} out"),
            &o_out,
            &out[from * d..],
            1e-4,
        );
        close(&format!("{name} fixed {fixed} state"), &o_st, &st, 1e-4);
    }
}

/// The RWKV-7 recurrence with its GroupNorm, bonus and gate, rows from 1 on, in layer 0
/// (which writes `v_first`) and after (which reads it): each backend against the scalar
/// twin, outputs, state and `v_first`.
#[test]
fn wkv7_matches_the_reference() {
    let o = device();
    let (h, n, t) = (2, 64, 3);
    let d = h * n;
    let within = |seed, lo: f32, hi: f32| -> Vec<f32> {
        let mid = (lo + hi) / 2.0;
        vals(t * d, seed)
            .iter()
            .map(|x| mid + x * (hi - mid))
            .collect()
    };
    let (r, k, v) = (vals(t * d, 1), vals(t * d, 2), vals(t * d, 3));
    let (w, a, vg) = (
        within(4, 0.55, 1.0),
        within(5, 0.0, 1.0),
        within(6, 0.0, 1.0),
    );
    let first = vals(t * d, 7);
    let (k_k, k_a, r_k) = (vals(d, 8), vals(d, 9), vals(d, 10));
    let (lw, lb, g) = (vals(d, 11), vals(d, 12), vals(t * d, 13));
    let st0 = vals(d * n, 14);
    let from = 1;
    let inputs = [
        &r[..],
        &w,
        &k,
        &v,
        &a,
        &vg,
        &first,
        &k_k,
        &k_a,
        &r_k,
        &lw,
        &lb,
        &g,
    ];
    for layer0 in [true, false] {
        let x = rwkv::backend::cpu::wkv7::Wkv7In {
            r: &r,
            w: &w,
            k: &k,
            v: &v,
            a: &a,
            residual: (!layer0).then_some((&vg[..], &first[..])),
            k_k: &k_k,
            k_a: &k_a,
            r_k: &r_k,
            ln: (&lw, &lb, 64e-5),
            g: &g[from * d..],
        };
        let (mut st, mut out) = (st0.clone(), vec![0.0; t * d]);
        scalar::wkv7(h, &x, &mut st, &mut out, from);
        let want_first = if layer0 { &v } else { &first };
        for (name, (o_out, o_st, o_first)) in [
            ("device", wkv7_on(&o, inputs, &st0, h, t, from, layer0)),
            (
                "cpu",
                wkv7_on(&Cpu::default(), inputs, &st0, h, t, from, layer0),
            ),
        ] {
            let what = format!("{name} layer0={layer0}");
            close(&format!("{what} out"), &o_out, &out[from * d..], 1e-4);
            close(&format!("{what} state"), &o_st, &st, 1e-4);
            assert_eq!(&o_first, want_first, "{what} v_first");
        }
    }
}

/// [`Backend::wkv7`] on `be` with the inputs `r w k v a vg v_first k_k k_a r_k ln_w ln_b g`:
/// the outputs from row `from`, the state, and `v_first` afterwards.
fn wkv7_on<B: Backend>(
    be: &B,
    inputs: [&[f32]; 13],
    st0: &[f32],
    h: usize,
    t: usize,
    from: usize,
    layer0: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = inputs[7].len();
    let ts: Vec<B::Tensor> = inputs.iter().map(|x| put(be, x)).collect();
    let [r, w, k, v, a, vg, _, k_k, k_a, r_k, lw, lb, g] = &ts[..] else {
        unreachable!()
    };
    let mut v_first = put(be, inputs[6]);
    let mut out = space(be, t * d);
    let mut data = StateData::Host(st0.to_vec());
    let st = be.state_mut(&mut data).unwrap();
    let mut sts = [st];
    let mut batch = be.batch();
    be.set_batch(&mut batch, &[0..t], &sts).unwrap();
    let all = |x| Rows::new(x, 0, t, d);
    be.wkv7(
        Wkv7 {
            heads: h,
            r: all(r),
            w: all(w),
            k: all(k),
            v: all(v),
            a: all(a),
            vg: (!layer0).then(|| all(vg)),
            v_first: RowsMut::new(&mut v_first, 0, t, d),
            k_k,
            k_a,
            r_k,
            state: 0..h * (d / h) * (d / h),
            out: RowsMut::new(&mut out, 0, t, d),
            ln_x: Norm {
                w: lw,
                b: lb,
                eps: 64e-5,
            },
            g: Rows::new(g, from, t - from, d),
            from,
        },
        &batch,
        &mut sts,
    )
    .unwrap();
    (
        get(be, &out, t * d)[from * d..].to_vec(),
        data.to_host().unwrap(),
        get(be, &v_first, t * d),
    )
}

/// Whole models on the device against the golden files, both modes, and the state read
/// back through the host.
#[test]
fn models_match_the_golden_on_the_device() {
    for (file, stem) in [
        ("tiny-rwkv6-1m.safetensors", "tiny-rwkv6-1m"),
        ("shakespeare-rwkv6.safetensors", "shakespeare-rwkv6"),
        ("rand-rwkv6-d256-fp16.safetensors", "rand-rwkv6-d256-fp16"),
        ("shakespeare-rwkv6.pth", "shakespeare-rwkv6"),
        ("rand-rwkv6-d256-bf16.safetensors", "rand-rwkv6-d256-bf16"),
        ("rand-rwkv6-d256-bf16.pth", "rand-rwkv6-d256-bf16"),
        (
            "rand-rwkv6-d256-fp16.hf.safetensors",
            "rand-rwkv6-d256-fp16",
        ),
        ("rand-rwkv6-d256-fp16.ai00.st", "rand-rwkv6-d256-fp16"),
        (
            "rand-rwkv6-world-d64-bf16.safetensors",
            "rand-rwkv6-world-d64-bf16",
        ),
        ("tiny-rwkv7-834k.safetensors", "tiny-rwkv7-834k"),
        ("rand-rwkv7-d256-bf16.pth", "rand-rwkv7-d256-bf16"),
        ("rand-rwkv7-d256-bf16.safetensors", "rand-rwkv7-d256-bf16"),
        ("rand-rwkv7-d256-fp16.safetensors", "rand-rwkv7-d256-fp16"),
        (
            "rand-rwkv7-world-d64-bf16.safetensors",
            "rand-rwkv7-world-d64-bf16",
        ),
        ("tiny-rwkv5-730k.safetensors", "tiny-rwkv5-730k"),
        ("rand-rwkv5-d256-bf16.pth", "rand-rwkv5-d256-bf16"),
        ("rand-rwkv5-d256-bf16.safetensors", "rand-rwkv5-d256-bf16"),
        ("rand-rwkv7a-d256-bf16.safetensors", "rand-rwkv7a-d256-bf16"),
        ("tiny-rwkv4-660k.safetensors", "tiny-rwkv4-660k"),
        ("rand-rwkv4-d256-bf16.safetensors", "rand-rwkv4-d256-bf16"),
        // llama.cpp's layout, its rescaled layers multiplied back
        ("tiny-rwkv6-1m.F32.gguf", "tiny-rwkv6-1m"),
    ] {
        let (Some(path), Some(g)) = (fixture(file), try_golden(stem)) else {
            skip(file);
            continue;
        };
        let m = on_device(&path);
        assert!(m.on_device());
        let close_to = |what: &str, got: &[f32], want: &[f32]| {
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                err <= 1e-4 * scale.max(10.0),
                "{file} {what}: {err} (scale {scale})"
            );
        };
        let mut st = m.new_state();
        for (t, (&tok, want)) in g.tokens.iter().zip(&g.logits).enumerate() {
            let got = m.forward(&[tok], &mut st, Logits::Last).unwrap();
            close_to(&format!("token {t}"), &got, want);
        }
        assert_state_close(file, &st, &g);
        let mut st = m.new_state();
        let seq = m.forward(&g.tokens, &mut st, Logits::Last).unwrap();
        close_to("sequence", &seq, &g.seq_logits);
        let all = m
            .forward(&g.tokens, &mut m.new_state(), Logits::All)
            .unwrap();
        close_to(
            "all rows, last",
            &all[(g.tokens.len() - 1) * m.cfg.vocab..],
            &g.seq_logits,
        );
        let copy = st.try_clone().unwrap(); // a copy on the device, read through the host
        assert_state_close(&format!("{file} sequence"), &copy, &g);
    }
}

/// One-token generation takes eight launches a layer (RWKV-6 and RWKV-7; seven for RWKV-4
/// and RWKV-5, which have no mix LoRA) and two for the head, one upload (the token's
/// embedding row) and one download (its logits): nothing else crosses the bus.
#[test]
fn a_token_is_eight_launches_a_layer_and_one_download() {
    for (file, launches) in [
        ("shakespeare-rwkv6.safetensors", 8),
        ("tiny-rwkv7-834k.safetensors", 8),
        ("tiny-rwkv5-730k.safetensors", 7),
        ("tiny-rwkv4-660k.safetensors", 7),
    ] {
        let m = on_device(&model_path(file));
        let mut st = m.new_state();
        m.forward(&[10], &mut st, Logits::Last).unwrap(); // uploads the state, sizes scratch
        let before = m.counters().unwrap();
        let n = 5;
        for tok in 0..n {
            m.forward(&[20 + tok], &mut st, Logits::Last).unwrap();
        }
        let after = m.counters().unwrap();
        let per = |a: u64, b: u64| (a - b) / n as u64;
        let layers = m.cfg.n_layer as u64;
        assert_eq!(
            per(after.launches, before.launches),
            launches * layers + 2,
            "{file}"
        );
        assert_eq!(per(after.downloads, before.downloads), 1, "{file}");
        assert_eq!(per(after.uploads, before.uploads), 1, "{file}");
    }
}

#[test]
fn device_output_equals_cpu_output_through_the_cli() {
    let m = model_arg("shakespeare-rwkv6.safetensors");
    let greedy = [
        "-t",
        "0",
        "--presence-penalty",
        "0",
        "--frequency-penalty",
        "0",
        "-n",
        "24",
    ];
    // The device multiplies in f32: so does the CPU here.
    let mut a = vec![
        "-m",
        m.as_str(),
        "-p",
        "ROMEO:\nWhat light",
        "--precision",
        "f32",
    ];
    a.extend_from_slice(&greedy);
    let cpu = run("rwkv-gen", &a, b"");
    a.extend_from_slice(&["--device", "opencl"]);
    let dev = run("rwkv-gen", &a, b"");
    assert_eq!(dev.code, 0, "{}", dev.stderr);
    assert_eq!(cpu.stdout, dev.stdout);
    let list = run("rwkv-gen", &["--list-devices"], b"");
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.text().contains("opencl:0:0"), "{}", list.text());
}

#[test]
fn auto_falls_back_and_bad_devices_are_named() {
    let m = model_arg("shakespeare-rwkv6.safetensors");
    // PoCL is a CPU device: auto finds no GPU and runs on the CPU.
    let r = run(
        "rwkv-gen",
        &["-m", &m, "--device", "auto", "-p", "x", "-n", "3"],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(
        "rwkv-gen",
        &["-m", &m, "--device", "opencl:7", "-p", "x"],
        b"",
    );
    assert_fails(&r, 1, &["no OpenCL platform 7"]);
    let r = run("rwkv-gen", &["-m", &m, "--device", "gpu", "-p", "x"], b"");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("gpu"), "{}", r.stderr);
}

/// The golden run from the state-tuning state, on the device: the imported state is
/// uploaded, advanced there, and read back.
#[test]
fn tuned_state_golden_on_the_device() {
    let g = golden("rand-rwkv6-d256-fp16.state");
    let path = model_path("rand-rwkv6-d256-fp16.safetensors");
    let m = on_device(&path);
    let shape = m.cfg.state_shape();
    let start =
        rwkv::state_file::import_tuning(&model_path("rand-rwkv6-d256-fp16.state.pth"), shape)
            .unwrap();
    let mut st = start.try_clone().unwrap();
    let seq = m.forward(&g.tokens, &mut st, Logits::Last).unwrap();
    let scale = g.seq_logits.iter().fold(0f32, |a, v| a.max(v.abs()));
    let err = seq
        .iter()
        .zip(&g.seq_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err <= 1e-3 * scale.max(1.0), "{err}");
    // A copy of a device state is current: it equals the CPU's state after the same run.
    let copy = st.try_clone().unwrap();
    let cpu = Model::load(&path).unwrap();
    let mut st_cpu = start;
    cpu.forward(&g.tokens, &mut st_cpu, Logits::None).unwrap();
    for (a, b) in copy.layers().unwrap().iter().zip(st_cpu.layers().unwrap()) {
        close("copied wkv", &a.wkv, &b.wkv, 1e-3);
    }
}

/// States fed on the device are written through the host; scores on the device (documents
/// in parallel on one queue) equal the CPU's.
#[test]
fn state_files_and_scores_from_the_device_equal_the_cpus() {
    let m = model_arg("shakespeare-rwkv6.safetensors");
    let dir = temp_dir("opencl-tools");
    let (cpu_st, dev_st) = (dir.join("cpu.state"), dir.join("dev.state"));
    let text = b"ROMEO:\nWhat light through yonder window breaks?";
    let r = run(
        "rwkv-state",
        &["feed", "-m", &m, "-o", cpu_st.to_str().unwrap()],
        text,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(
        "rwkv-state",
        &[
            "feed",
            "-m",
            &m,
            "--device",
            "opencl",
            "-o",
            dev_st.to_str().unwrap(),
        ],
        text,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(
        "rwkv-state",
        &[
            "diff",
            cpu_st.to_str().unwrap(),
            dev_st.to_str().unwrap(),
            "--json",
        ],
        b"",
    );
    let rows = r.json();
    assert!(!rows.is_empty(), "{}", r.stderr);
    for row in rows {
        assert!(row["max_abs_diff"].as_f64().unwrap() < 2e-3, "{row}");
    }
    let lines = b"ROMEO:\nJULIET:\nWhat light through yonder window breaks?\nIt is the east.\n";
    let cpu = run("rwkv-score", &["-m", &m, "-q", "--lines"], lines).json();
    let dev = run(
        "rwkv-score",
        &["-m", &m, "-q", "--lines", "--device", "opencl"],
        lines,
    )
    .json();
    assert_eq!(cpu.len(), 4);
    for (a, b) in cpu.iter().zip(&dev) {
        assert_eq!(a["tokens"], b["tokens"]);
        let (x, y) = (a["nll"].as_f64().unwrap(), b["nll"].as_f64().unwrap());
        assert!((x - y).abs() < 1e-3 * x.abs().max(1.0), "{x} vs {y}");
    }
}

/// Streams decoded together on the device (one N-token product per weight, a norm and a
/// recurrence launch per stream) give each stream what it gets alone, both versions.
#[test]
fn batched_streams_on_the_device_equal_single_streams() {
    for file in [
        "shakespeare-rwkv6.safetensors",
        "tiny-rwkv7-834k.safetensors",
        "tiny-rwkv5-730k.safetensors",
        "rand-rwkv7a-d256-bf16.safetensors",
        "tiny-rwkv4-660k.safetensors",
    ] {
        let m = on_device(&model_path(file));
        let v = m.cfg.vocab;
        let prompts: [&[u32]; 3] = [&[10, 20, 30], &[40], &[50, 60]];
        let mut alone = Vec::new();
        let mut states = Vec::new();
        for p in prompts {
            let mut st = m.new_state();
            m.forward(p, &mut st, Logits::Last).unwrap();
            states.push(st);
        }
        for (p, st) in prompts.iter().zip(&states) {
            let mut st = st.try_clone().unwrap();
            let mut rows = Vec::new();
            for tok in [7, 8, 9] {
                rows.push(m.forward(&[tok + p[0]], &mut st, Logits::Last).unwrap());
            }
            alone.push(rows);
        }
        for step in 0..3 {
            let toks: Vec<u32> = prompts.iter().map(|p| 7 + step as u32 + p[0]).collect();
            let mut refs: Vec<&mut rwkv::State> = states.iter_mut().collect();
            let all = m.step(&toks, &mut refs).unwrap();
            for (i, rows) in alone.iter().enumerate() {
                close(
                    &format!("{file} stream {i} step {step}"),
                    &all[i * v..(i + 1) * v],
                    &rows[step],
                    1e-5,
                );
            }
        }
    }
}

/// RWKV-7a's parts: a product per row with the row's own matrix, and the `Scale` step
/// (`x *= bias + y`), each backend against a plain reference, on rows from 1 on.
#[test]
fn row_products_and_the_scale_step_match_the_reference() {
    let (n, i_n, j_n, f) = (3, 4, 5, 6);
    let (x, m) = (vals(n * i_n, 1), vals(n * i_n * j_n, 2));
    let (w, bias, k0) = (vals(f * i_n, 3), vals(f, 4), vals((n + 1) * f, 5));
    let mut want_rows = vec![0.0; n * j_n];
    for r in 0..n {
        for j in 0..j_n {
            let terms = (0..i_n).map(|i| x[r * i_n + i] * m[(r * i_n + i) * j_n + j]);
            want_rows[r * j_n + j] = terms.sum();
        }
    }
    let mut want_k = k0.clone();
    for r in 0..n {
        for o in 0..f {
            let y: f32 = (0..i_n).map(|i| w[o * i_n + i] * x[r * i_n + i]).sum();
            want_k[(r + 1) * f + o] *= bias[o] + y;
        }
    }
    fn run<B: Backend>(be: &B, a: [&[f32]; 5], dims: [usize; 4]) -> (Vec<f32>, Vec<f32>) {
        let [x, m, w, bias, k0] = a;
        let [n, i_n, j_n, f] = dims;
        let (tx, tm, tb) = (put(be, x), put(be, m), put(be, bias));
        let mut tk = put(be, k0);
        let mut out = space(be, n * j_n);
        be.row_products(RowProduct {
            x: Rows::new(&tx, 0, n, i_n),
            m: Rows::new(&tm, 0, n, i_n * j_n),
            out: RowsMut::new(&mut out, 0, n, j_n),
        })
        .unwrap();
        let wm = be
            .matrix(Matrix {
                rows: f,
                cols: i_n,
                data: Data::F32(Buf::Owned(w.to_vec())),
            })
            .unwrap();
        let mut y = space(be, n * f);
        let then = Then::Scale {
            bias: &tb,
            x: RowsMut::new(&mut tk, 1, n, f),
        };
        let job = Product {
            w: &wm,
            x: Rows::new(&tx, 0, n, i_n),
            y: RowsMut::new(&mut y, 0, n, f),
            then,
        };
        be.products(Precision::F32, &mut [job]).unwrap();
        (get(be, &out, n * j_n), get(be, &tk, (n + 1) * f))
    }
    let a = [&x[..], &m, &w, &bias, &k0];
    let dims = [n, i_n, j_n, f];
    for (name, (rows, k)) in [
        ("device", run(&device(), a, dims)),
        ("cpu", run(&Cpu::default(), a, dims)),
    ] {
        close(&format!("{name} row products"), &rows, &want_rows, 1e-5);
        close(&format!("{name} scale"), &k, &want_k, 1e-5);
    }
}

/// GGUF's decoded blocks and merged adapters are host work before the weights go to the
/// device: the device's logits stay within the CPU's bounds of the same goldens
/// (tests/gguf.rs, tests/adapters.rs).
#[test]
fn gguf_blocks_and_adapters_on_the_device() {
    use rwkv::model::adapter::AdapterSpec;
    for (file, adapters, stem, bound) in [
        (
            "rand-rwkv7-d256-bf16.Q6_K.gguf",
            vec![],
            "rand-rwkv7-d256-bf16.Q6_K",
            1.25 * 1.93e-2,
        ),
        (
            "tiny-rwkv7-834k.Q4_0.gguf",
            vec![],
            "tiny-rwkv7-834k.Q4_0",
            1.25 * 3.99e-3,
        ),
        (
            "tiny-rwkv7-834k.Q8_0.gguf",
            vec![],
            "tiny-rwkv7-834k.Q8_0",
            1.25 * 2.27e-3,
        ),
        (
            "tiny-rwkv6-1m.Q8_0.gguf",
            vec![],
            "tiny-rwkv6-1m.Q8_0",
            1.25 * 3.21e-2,
        ),
        (
            "tiny-rwkv6-1m.Q4_0.gguf",
            vec![],
            "tiny-rwkv6-1m.Q4_0",
            1.25 * 2.69e-2,
        ),
        (
            "rand-rwkv7-d256-bf16.pth",
            vec![("rand-rwkv7-d256-bf16.disha.pth", 1.0)],
            "rand-rwkv7-d256-bf16.disha",
            1e-4,
        ),
        (
            "rand-rwkv7-d256-bf16.pth",
            vec![("rand-rwkv7-d256-bf16.lora.pth", 2.0)],
            "rand-rwkv7-d256-bf16.lora",
            1e-4,
        ),
    ] {
        let opts = LoadOptions {
            device: "opencl".parse().unwrap(),
            adapters: adapters
                .iter()
                .map(|&(a, scale)| AdapterSpec {
                    path: model_path(a),
                    scale,
                })
                .collect(),
            ..LoadOptions::default()
        };
        let m = Model::load_with(&model_path(file), opts).unwrap();
        assert!(m.on_device());
        let e = worst_error(&m, &golden(stem));
        assert!(e <= bound, "{file}: {e} against {bound}");
    }
}
