//! The scalar twins: plain loops that say what each vectorised or OpenCL kernel computes.
//! The tests hold every kernel to its twin (bit for bit where the kernel promises the
//! twin's order, within rounding elsewhere).

use super::quant::acts::QActs;
use super::quant::rows::{code_unit, qrow, CLASSES};
pub use super::quant::rows::{quant_dot, quantize_token};
pub use super::shared::tree16;
use crate::isa::Isa;
use crate::tensor::Matrix;
use half::bf16;

/// `a . b` over `[n]`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `W [out, in]`, `x [t, in]` -> `y [t, out]`.
pub fn matmul(w: &Matrix, x: &[f32], t: usize, y: &mut [f32]) {
    let wf = w.to_f32();
    let (out, inp) = (w.rows, w.cols);
    for ti in 0..t {
        for o in 0..out {
            y[ti * out + o] = dot(&wf[o * inp..(o + 1) * inp], &x[ti * inp..(ti + 1) * inp]);
        }
    }
}

/// Sequence products at bf16 precision: weights and activations rounded to bf16, then
/// summed a pair of columns at a time in f32.
pub fn matmul_bf16(w: &Matrix, x: &[f32], t: usize, y: &mut [f32]) {
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

/// Generation products at bf16 precision ([`super::plan::Kernel::Bf16Dots`] and
/// [`super::plan::Kernel::Bf16Tiles`]): bf16 weights against activations rounded to bf16,
/// sixteen lanes, lane `l` adding the products of columns `32s + 2l + 1`, then `32s + 2l`,
/// for each step `s` in turn (as `vdpbf16ps` does), the lanes reduced by [`tree16`].
pub fn matmul_bf16_rows(w: &Matrix, x: &[f32], t: usize, y: &mut [f32]) {
    let (out, inp) = (w.rows, w.cols);
    let steps = inp.div_ceil(32);
    // a row rounded to bf16, zeros past `inp` up to whole steps
    let round = |v: &[f32]| -> Vec<f32> {
        let mut r = vec![0.0; steps * 32];
        for (r, &v) in r.iter_mut().zip(v) {
            *r = bf16::from_f32(v).to_f32();
        }
        r
    };
    let mut row = vec![0.0; inp];
    for o in 0..out {
        w.row_f32(o, &mut row);
        let wr = round(&row);
        for ti in 0..t {
            let xr = round(&x[ti * inp..(ti + 1) * inp]);
            let mut lanes = [0.0f32; CLASSES];
            for s in 0..steps {
                for (l, acc) in lanes.iter_mut().enumerate() {
                    let i = 32 * s + 2 * l;
                    *acc += wr[i + 1] * xr[i + 1];
                    *acc += wr[i] * xr[i];
                }
            }
            y[ti * out + o] = tree16(lanes);
        }
    }
}

/// int8 and nf4 matrices: activations rounded as the kernels round them, then
/// [`quant_dot`].
pub fn matmul_quant(w: &Matrix, x: &[f32], t: usize, y: &mut [f32]) {
    let (unit, act) = code_unit(w).expect("matmul_quant: the matrix is not quantized");
    let mut acts = QActs::default();
    acts.quantize(Isa::Portable, x, w.cols, unit, act);
    for ti in 0..t {
        for o in 0..w.rows {
            y[ti * w.rows + o] = quant_dot(qrow(w, o), acts.token(ti));
        }
    }
}

/// Per row of `x [t, D]`: `(x - mean) / sqrt(var + eps) * weight + bias`, in place.
pub fn layer_norm(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
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

/// The RWKV-6 recurrence over `t` tokens, `D = H * S`: `r, k, v, w [t, D]`, `u [H, S]`,
/// `state [H, S, S]` (`[head, key i, value j]`, updated), `out [t, D]`. Per head and token:
/// `out[j] = sum_i r[i] (u[i] k[i] v[j] + s[i][j])`, then `s[i][j] = k[i] v[j] + w[i] s[i][j]`.
#[allow(clippy::too_many_arguments)]
pub fn wkv6(
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

/// The RWKV-7 recurrence over the `t` tokens of one stream with its GroupNorm, bonus and
/// gate (see [`crate::backend::Wkv7`]), `D = H * N`: `state [H, N, N]` (`[head, value i,
/// key j]`, updated); `out [t, D]` written for rows from `from` on (`x.g`'s row 0 is row
/// `from`). Per head and token, with `kk`, `k`, `v` adjusted first:
/// `sa[i] = sum_j s[i][j] (-kk[j])`, `s[i][j] = s[i][j] w[j] + sa[i] (kk[j] a[j]) + v[i] k[j]`,
/// `out[i] = sum_j s[i][j] r[j]`.
pub fn wkv7(
    heads: usize,
    x: &super::wkv7::Wkv7In,
    state: &mut [f32],
    out: &mut [f32],
    from: usize,
) {
    let d = x.k_k.len();
    let n = d / heads;
    let t = x.r.len() / d;
    for ti in 0..t {
        for h in 0..heads {
            let c0 = h * n;
            let at = |j: usize| ti * d + c0 + j;
            let raw: Vec<f32> = (0..n).map(|j| x.k[at(j)] * x.k_k[c0 + j]).collect();
            let len = raw.iter().fold(0.0f32, |s, q| s + q * q).sqrt();
            let kk: Vec<f32> = raw
                .iter()
                .map(|q| q / len.max(super::wkv7::NORM_EPS))
                .collect();
            let a = |j: usize| x.a[at(j)];
            let k: Vec<f32> = (0..n)
                .map(|j| x.k[at(j)] * (1.0 + (a(j) - 1.0) * x.k_a[c0 + j]))
                .collect();
            let v: Vec<f32> = (0..n)
                .map(|i| match x.residual {
                    None => x.v[at(i)],
                    Some((vg, first)) => x.v[at(i)] + (first[at(i)] - x.v[at(i)]) * vg[at(i)],
                })
                .collect();
            let s = &mut state[h * n * n..(h + 1) * n * n];
            // a sum over the keys: key j in lane j % 16, in order, the lanes as a tree
            let lanes = |f: &dyn Fn(usize) -> f32| {
                let mut acc = [0.0f32; 16];
                for j in 0..n {
                    acc[j % 16] += f(j);
                }
                tree16(acc)
            };
            let mut o = vec![0.0f32; n];
            for i in 0..n {
                let sa = lanes(&|j| s[i * n + j] * -kk[j]);
                for j in 0..n {
                    let c = &mut s[i * n + j];
                    *c = *c * x.w[at(j)] + sa * (kk[j] * a(j)) + v[i] * k[j];
                }
                o[i] = lanes(&|j| s[i * n + j] * x.r[at(j)]);
            }
            if ti < from {
                continue;
            }
            let (lw, lb, eps) = x.ln;
            layer_norm(&mut o, &lw[c0..c0 + n], &lb[c0..c0 + n], eps);
            let bonus = (0..n).fold(0.0f32, |acc, j| acc + x.r[at(j)] * k[j] * x.r_k[c0 + j]);
            for i in 0..n {
                out[at(i)] = (o[i] + bonus * v[i]) * x.g[(ti - from) * d + c0 + i];
            }
        }
    }
}
