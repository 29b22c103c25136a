//! RWKV-6 ("Finch", x060): weights built from a checkpoint by name, and the forward pass.
//!
//! One code path serves one token and a whole sequence: every projection runs over the `T`
//! rows at once as a matrix-matrix product, and only the wkv recurrence steps through `t`.
//! The math is `shared/docs/RWKV6.md`; notation `D` width, `H` heads, `S` head size,
//! `F` FFN width, `V` vocab, `M` mix-LoRA width, `K` decay-LoRA width, `T` tokens.

use super::checkpoint::Checkpoint;
use super::names::Names;
use super::Config;
use crate::backend::{Backend, MatJob, Then};
use crate::error::Result;
use crate::state::{LayerState, State};
use crate::tensor::quant::{self, Quant};
use crate::tensor::{DType, Matrix};
use rayon::prelude::*;

/// LayerNorm epsilon.
pub const LN_EPS: f32 = 1e-5;
/// GroupNorm (ln_x) epsilon.
pub const GN_EPS: f32 = 64e-5;

/// Time mix (attention) weights of one layer.
pub struct Att {
    /// `[D]` each: token-shift mix coefficients.
    pub maa_x: Vec<f32>,
    /// `[5, D]`: the w, k, v, r, g mix coefficients, in that order.
    pub maa: [Vec<f32>; 5],
    /// `[5M, D]`: mix LoRA down, Linear orientation.
    pub maa_w1: Matrix,
    /// 5 x `[D, M]`: mix LoRA up for w, k, v, r, g.
    pub maa_w2: [Matrix; 5],
    /// `[D]`
    pub decay: Vec<f32>,
    /// `[K, D]`: decay LoRA down.
    pub decay_w1: Matrix,
    /// `[D, K]`: decay LoRA up.
    pub decay_w2: Matrix,
    /// `[H, S]`: the bonus `u` of the current token.
    pub faaaa: Vec<f32>,
    /// `[D, D]` each.
    pub receptance: Matrix,
    pub key: Matrix,
    pub value: Matrix,
    pub gate: Matrix,
    pub output: Matrix,
    /// `[D]`: GroupNorm affine part.
    pub ln_x_w: Vec<f32>,
    pub ln_x_b: Vec<f32>,
}

/// Channel mix (FFN) weights of one layer.
pub struct Ffn {
    /// `[D]`
    pub maa_k: Vec<f32>,
    pub maa_r: Vec<f32>,
    /// `[F, D]`
    pub key: Matrix,
    /// `[D, D]`
    pub receptance: Matrix,
    /// `[D, F]`
    pub value: Matrix,
}

pub struct Layer {
    /// `[D]` each.
    pub ln1_w: Vec<f32>,
    pub ln1_b: Vec<f32>,
    pub ln2_w: Vec<f32>,
    pub ln2_b: Vec<f32>,
    pub att: Att,
    pub ffn: Ffn,
}

pub struct Weights {
    /// `[V, D]`, stored; ln0 is applied in f32 when a row is looked up.
    pub emb: Matrix,
    /// `[D]`
    pub ln0_w: Vec<f32>,
    pub ln0_b: Vec<f32>,
    pub layers: Vec<Layer>,
    /// `[D]`
    pub ln_out_w: Vec<f32>,
    pub ln_out_b: Vec<f32>,
    /// `[V, D]`
    pub head: Matrix,
}

/// Which logits a forward call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None: only the state advances (prompt prefixes).
    None,
    /// `[V]` after the last token.
    Last,
    /// `[T, V]` after every token (scoring).
    All,
}

/// Read the hyper-parameters from the tensor shapes.
pub fn config(ck: &Checkpoint, names: &Names) -> Result<Config> {
    let shape = |canon: &str| -> Result<Vec<usize>> {
        let stored = names.stored(canon);
        match ck.logical_shape(stored) {
            Some(s) => Ok(s),
            None => Ok(ck.get(stored)?.shape.clone()),
        }
    };
    let emb = shape("emb.weight")?;
    let faaaa = shape("blocks.0.att.time_faaaa")?;
    let ffn_key = shape("blocks.0.ffn.key.weight")?;
    let decay_w1 = shape("blocks.0.att.time_decay_w1")?;
    let maa_w2 = shape("blocks.0.att.time_maa_w2")?;
    let bad = |name: &str, found: &[usize], expected: Vec<usize>| crate::Error::Shape {
        path: ck.path.clone(),
        name: names.stored(name).to_string(),
        expected,
        found: found.to_vec(),
    };
    if emb.len() != 2 {
        return Err(bad("emb.weight", &emb, vec![0, 0]));
    }
    let (vocab, d) = (emb[0], emb[1]);
    if faaaa.len() != 2 || faaaa[0] * faaaa[1] != d {
        return Err(bad("blocks.0.att.time_faaaa", &faaaa, vec![d / 64, 64]));
    }
    let out_in = names.layout.lora_is_out_in();
    // decay_w1 is [D, K] (BlinkDL/HF) or [K, D] (Ai00); maa_w2 is [5, M, D] or [5, D, M].
    let k = if out_in {
        decay_w1[0]
    } else {
        decay_w1[decay_w1.len() - 1]
    };
    let m = if maa_w2.len() == 3 {
        if out_in {
            maa_w2[2]
        } else {
            maa_w2[1]
        }
    } else {
        return Err(bad("blocks.0.att.time_maa_w2", &maa_w2, vec![5, 32, d]));
    };
    Ok(Config {
        n_layer: names.n_layers(),
        n_embd: d,
        n_head: faaaa[0],
        head_size: faaaa[1],
        ffn: ffn_key[0],
        vocab,
        maa_lora: m,
        decay_lora: k,
    })
}

/// The matrices `--quant` quantizes: every projection of the first `layers` layers, and
/// the head. The embedding (read a row at a time), the LoRA matrices and the vectors keep
/// their stored precision.
pub fn quantizable(canon: &str, layers: usize) -> bool {
    if canon == "head.weight" {
        return true;
    }
    let Some(rest) = canon.strip_prefix("blocks.") else {
        return false;
    };
    let Some((n, tail)) = rest.split_once('.') else {
        return false;
    };
    let projection = matches!(
        tail,
        "att.receptance.weight"
            | "att.key.weight"
            | "att.value.weight"
            | "att.gate.weight"
            | "att.output.weight"
            | "ffn.key.weight"
            | "ffn.receptance.weight"
            | "ffn.value.weight"
    );
    projection && n.parse::<usize>().is_ok_and(|n| n < layers)
}

/// Build the weights of every layer, checking every shape against `cfg`; with `quant`,
/// quantize the [`quantizable`] matrices of the first `quant_layers` layers as they load and
/// release their mapped pages.
pub fn load(
    ck: &Checkpoint,
    names: &Names,
    cfg: &Config,
    quant: Option<Quant>,
    quant_layers: usize,
) -> Result<Weights> {
    let (d, f, v) = (cfg.n_embd, cfg.ffn, cfg.vocab);
    let (m, k) = (cfg.maa_lora, cfg.decay_lora);
    let out_in = names.layout.lora_is_out_in();
    let mat = |canon: &str, shape: &[usize]| -> Result<Matrix> {
        let stored = names.stored(canon);
        let w = ck.matrix(stored, shape)?;
        match quant {
            Some(q)
                if quantizable(canon, quant_layers)
                    && quant::fits(w.cols)
                    && matches!(w.dtype(), DType::F32 | DType::F16 | DType::BF16) =>
            {
                let qm = quant::quantize(&w, q);
                drop(w);
                ck.release(stored);
                Ok(qm)
            }
            _ => Ok(w),
        }
    };
    let vec = |canon: &str, n: usize| ck.vector(names.stored(canon), &[n]);
    // A LoRA matrix used as `x @ W` with W `[inp, out]`, returned as Linear `[out, inp]`.
    let lora = |canon: &str, inp: usize, out: usize| -> Result<Matrix> {
        if out_in {
            mat(canon, &[out, inp])
        } else {
            // An owned copy: the mapped original need not stay resident.
            let t = mat(canon, &[inp, out])?.transposed();
            ck.release(names.stored(canon));
            Ok(t)
        }
    };
    // The head first: quantizing it holds its mapped pages for a moment, best done while
    // little else is resident.
    let head = mat("head.weight", &[v, d])?;
    let mut layers = Vec::with_capacity(cfg.n_layer);
    for i in 0..cfg.n_layer {
        let p = |s: &str| format!("blocks.{i}.{s}");
        let w2_name = p("att.time_maa_w2");
        let w2_all = if out_in {
            mat(&w2_name, &[5, d, m])?
        } else {
            mat(&w2_name, &[5, m, d])?
        };
        let w2_rows = w2_all.rows / 5;
        let w2 = |j: usize| {
            let slice = w2_all.row_block(j * w2_rows, w2_rows);
            if out_in {
                slice
            } else {
                slice.transposed()
            }
        };
        let att = Att {
            maa_x: vec(&p("att.time_maa_x"), d)?,
            maa: [
                vec(&p("att.time_maa_w"), d)?,
                vec(&p("att.time_maa_k"), d)?,
                vec(&p("att.time_maa_v"), d)?,
                vec(&p("att.time_maa_r"), d)?,
                vec(&p("att.time_maa_g"), d)?,
            ],
            maa_w1: lora(&p("att.time_maa_w1"), d, 5 * m)?,
            maa_w2: {
                let slices = [w2(0), w2(1), w2(2), w2(3), w2(4)];
                if !out_in {
                    ck.release(names.stored(&w2_name));
                }
                slices
            },
            decay: vec(&p("att.time_decay"), d)?,
            decay_w1: lora(&p("att.time_decay_w1"), d, k)?,
            decay_w2: lora(&p("att.time_decay_w2"), k, d)?,
            faaaa: ck.vector(
                names.stored(&p("att.time_faaaa")),
                &[cfg.n_head, cfg.head_size],
            )?,
            receptance: mat(&p("att.receptance.weight"), &[d, d])?,
            key: mat(&p("att.key.weight"), &[d, d])?,
            value: mat(&p("att.value.weight"), &[d, d])?,
            gate: mat(&p("att.gate.weight"), &[d, d])?,
            output: mat(&p("att.output.weight"), &[d, d])?,
            ln_x_w: vec(&p("att.ln_x.weight"), d)?,
            ln_x_b: vec(&p("att.ln_x.bias"), d)?,
        };
        let ffn = Ffn {
            maa_k: vec(&p("ffn.time_maa_k"), d)?,
            maa_r: vec(&p("ffn.time_maa_r"), d)?,
            key: mat(&p("ffn.key.weight"), &[f, d])?,
            receptance: mat(&p("ffn.receptance.weight"), &[d, d])?,
            value: mat(&p("ffn.value.weight"), &[d, f])?,
        };
        layers.push(Layer {
            ln1_w: vec(&p("ln1.weight"), d)?,
            ln1_b: vec(&p("ln1.bias"), d)?,
            ln2_w: vec(&p("ln2.weight"), d)?,
            ln2_b: vec(&p("ln2.bias"), d)?,
            att,
            ffn,
        });
    }
    Ok(Weights {
        emb: mat("emb.weight", &[v, d])?,
        ln0_w: vec("blocks.0.ln0.weight", d)?,
        ln0_b: vec("blocks.0.ln0.bias", d)?,
        layers,
        ln_out_w: vec("ln_out.weight", d)?,
        ln_out_b: vec("ln_out.bias", d)?,
        head,
    })
}

/// `sx[t] = prev(t) - xx[t]` where `prev(0)` is the shift state and `prev(t) = xx[t-1]`;
/// the shift state becomes the last row. `xx`, `sx` are `[T, D]`.
fn token_shift(xx: &[f32], shift: &mut [f32], sx: &mut [f32]) {
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

/// Elements per piece of an elementwise pass: a prompt's passes are spread over the
/// threads (run on one, they left the other core idle: 12 % of a bf16 prompt), a token's
/// stays whole.
const PIECE: usize = 16 * 1024;

/// `f(first element, piece)` over `v` in pieces of [`PIECE`], in parallel.
fn par_pieces(v: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if v.len() <= PIECE {
        return f(0, v);
    }
    v.par_chunks_mut(PIECE)
        .enumerate()
        .for_each(|(i, p)| f(i * PIECE, p));
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
fn mix(xx: &[f32], sx: &[f32], maa: &[f32], out: &mut [f32]) {
    let d = maa.len();
    par_rows(out, d, |r0, p| {
        for (k, o) in p.chunks_mut(d).enumerate() {
            let row = (r0 + k) * d..(r0 + k + 1) * d;
            let xs = o.iter_mut().zip(&xx[row.clone()]).zip(&sx[row]);
            xs.zip(maa).for_each(|(((o, x), s), m)| *o = x + s * m);
        }
    });
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Weights {
    /// Embedding rows of `tokens` with ln0 applied: `[T, D]`.
    pub fn embed(&self, be: &dyn Backend, tokens: &[u32]) -> Vec<f32> {
        let d = self.emb.cols;
        let mut x = vec![0.0; tokens.len() * d];
        for (row, &tok) in x.chunks_mut(d).zip(tokens) {
            self.emb.row_f32(tok as usize, row);
        }
        be.layer_norm(&mut x, &self.ln0_w, &self.ln0_b, LN_EPS);
        x
    }

    /// Feed `tokens` (all `< V`, at least one) from `state`, advancing it.
    pub fn forward(
        &self,
        be: &dyn Backend,
        cfg: &Config,
        tokens: &[u32],
        state: &mut State,
        want: Logits,
    ) -> Vec<f32> {
        // The calling thread's scratch, used on a pool thread: the products' parallel regions
        // then split from there, and the calling thread, which would only wait, hands over
        // once a call instead of once a product.
        with_scratch(|sc| {
            rayon::scope(|_| {
                let t = tokens.len();
                let d = cfg.n_embd;
                let mut x = std::mem::take(&mut sc.x);
                x.resize(t * d, 0.0);
                for (row, &tok) in x.chunks_mut(d).zip(tokens) {
                    self.emb.row_f32(tok as usize, row);
                }
                be.layer_norm(&mut x, &self.ln0_w, &self.ln0_b, LN_EPS);
                let last = self.layers.len() - 1;
                for (i, (layer, st)) in self.layers.iter().zip(state.layers_mut()).enumerate() {
                    // Rows of the layer's output that anything reads: every one, but in the
                    // last layer only the logits' (the state takes every token all the same).
                    let need = match want {
                        _ if i < last => t,
                        Logits::None => 0,
                        Logits::Last => 1,
                        Logits::All => t,
                    };
                    // the channel mix also reads, through its token shift, the row before
                    time_mix(be, cfg, layer, &mut x, st, sc, t - (need + 1).min(t));
                    channel_mix(be, cfg, layer, &mut x, st, sc, t - need);
                }
                let rows = match want {
                    Logits::None => &mut x[..0],
                    Logits::Last => &mut x[(t - 1) * d..],
                    Logits::All => &mut x[..],
                };
                let n = rows.len() / d;
                let mut logits = vec![0.0; n * cfg.vocab];
                if n > 0 {
                    be.layer_norm(rows, &self.ln_out_w, &self.ln_out_b, LN_EPS);
                    be.matmul(&self.head, rows, n, &mut logits);
                }
                sc.x = x;
                logits
            })
        })
    }
}

/// The activations of a forward pass, sized by the first call on a thread and reused, so
/// that generating a token allocates nothing but the logits it returns.
#[derive(Default)]
struct Scratch {
    /// The residual stream `[T, D]`.
    x: Vec<f32>,
    /// The normed input `[T, D]` and its token shift `[T, D]`.
    xx: Vec<f32>,
    sx: Vec<f32>,
    /// Time mix: the LoRA input `[T, D]` and hidden layer `[T, 5 M]`, split per target
    /// `[5][T, M]`; the mixed inputs `[5][T, D]` (`w k v r g`); `r k v g [4][T, D]`; the
    /// decay LoRA `[T, K]` and decay `[T, D]`; the wkv output `[T, D]`.
    xxx: Vec<f32>,
    lora: Vec<f32>,
    part: [Vec<f32>; 5],
    mixed: [Vec<f32>; 5],
    rkvg: [Vec<f32>; 4],
    decay_lora: Vec<f32>,
    decay: Vec<f32>,
    out: Vec<f32>,
    /// A projection's output `[T, D]`.
    y: Vec<f32>,
    /// Channel mix: the key `[T, F]`.
    kk: Vec<f32>,
}

/// `v` as a slice of `n` elements (grown if needed, never shrunk).
fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Run `f` on this thread's [`Scratch`] (a fresh one if a forward pass is already running
/// further up this thread's stack).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut sc) => f(&mut sc),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// `x [T, D] += Wo (GroupNorm(wkv(r, k, v, w)) * g)` for the rows from `from` on (`from <
/// T`); rows before it stay as they are, though the state takes every token. Skipping them
/// spares the receptance, gate and output products there.
#[allow(clippy::too_many_arguments)]
fn time_mix(
    be: &dyn Backend,
    cfg: &Config,
    l: &Layer,
    x: &mut [f32],
    st: &mut LayerState,
    sc: &mut Scratch,
    from: usize,
) {
    let a = &l.att;
    let d = cfg.n_embd;
    let t = x.len() / d;
    let m = cfg.maa_lora;
    let xx = sized(&mut sc.xx, t * d);
    xx.copy_from_slice(x);
    be.layer_norm(xx, &l.ln1_w, &l.ln1_b, LN_EPS);
    let sx = sized(&mut sc.sx, t * d);
    token_shift(xx, &mut st.att_shift, sx);

    // Data-dependent mix: m = tanh(xxx @ maa_w1), delta_j = m_j @ maa_w2[j].
    let xxx = sized(&mut sc.xxx, t * d);
    mix(xx, sx, &a.maa_x, xxx);
    let lora = sized(&mut sc.lora, t * 5 * m);
    let tanh: Then = &|_, _, y| y.iter_mut().for_each(|v| *v = v.tanh());
    be.matmuls(t, &mut [MatJob::new(&a.maa_w1, xxx, lora).then(tanh)]);
    let part = sc.part.each_mut().map(|p| sized(p, t * m));
    for (j, p) in part.into_iter().enumerate() {
        for (ti, row) in p.chunks_mut(m).enumerate() {
            row.copy_from_slice(&lora[ti * 5 * m + j * m..ti * 5 * m + (j + 1) * m]);
        }
    }
    // The mixed inputs: each delta becomes `xx + sx * (maa_j + delta)` where it is summed.
    let (xx, sx) = (&*xx, &*sx);
    let mixes = a.maa.each_ref().map(|maa| {
        move |ti: usize, c0: usize, y: &mut [f32]| {
            let at = ti * d + c0..ti * d + c0 + y.len();
            let ins = y.iter_mut().zip(&xx[at.clone()]).zip(&sx[at]);
            ins.zip(&maa[c0..])
                .for_each(|(((o, x), s), m)| *o = x + s * (m + *o));
        }
    });
    {
        let mixed = sc.mixed.each_mut().map(|v| sized(v, t * d));
        let parts = sc.part.each_ref().map(|p| &p[..t * m]);
        let mut jobs = (a.maa_w2.iter().zip(parts).zip(mixed).zip(&mixes))
            .map(|(((w, x), y), f)| MatJob::new(w, x, y).then(f));
        be.matmuls(
            t,
            &mut std::array::from_fn::<_, 5, _>(|_| jobs.next().unwrap()),
        );
    }

    // r, k, v, g and the decay LoRA's first factor, in one parallel region; r and g only
    // from row `from` (r is zero before it, so the wkv outputs nobody reads stay finite).
    let [xw, xk, xv, xr, xg] = sc.mixed.each_ref().map(|v| &v[..t * d]);
    let [r, k, v, g] = sc.rkvg.each_mut().map(|y| sized(y, t * d));
    let dl = sized(&mut sc.decay_lora, t * a.decay_w1.rows);
    let (r0, r) = r.split_at_mut(from * d);
    r0.fill(0.0);
    let (xr, xg, g) = (&xr[from * d..], &xg[from * d..], &mut g[from * d..]);
    let gate_act: Then = &|_, _, y| y.iter_mut().for_each(|v| *v = silu(*v));
    let (k, v) = (MatJob::new(&a.key, xk, k), MatJob::new(&a.value, xv, v));
    let r = MatJob::new(&a.receptance, xr, r);
    let g = MatJob::new(&a.gate, xg, g).then(gate_act);
    let dl = MatJob::new(&a.decay_w1, xw, dl).then(tanh);
    if from == 0 {
        be.matmuls(t, &mut [r, k, v, g, dl]);
    } else {
        be.matmuls(t, &mut [k, v, dl]);
        be.matmuls(t - from, &mut [r, g]);
    }
    let [r, k, v, g] = sc.rkvg.each_mut().map(|y| &mut y[..t * d]);
    let g = &g[from * d..];

    // w = exp(-exp(decay + tanh(xw @ decay_w1) @ decay_w2)); the recurrence's outputs
    // group-normed and gated a head at a time, as each head's task ends
    let dl = &sc.decay_lora[..t * a.decay_w1.rows];
    let w = sized(&mut sc.decay, t * d);
    let decay: Then = &|_, c0, y| {
        for (v, decay) in y.iter_mut().zip(&a.decay[c0..]) {
            *v = (-(decay + *v).exp()).exp();
        }
    };
    be.matmuls(t, &mut [MatJob::new(&a.decay_w2, dl, w).then(decay)]);
    let gated: Then = &|ti, c0, o| {
        if ti >= from {
            let ch = c0..c0 + o.len();
            be.group_norm(o, 1, &a.ln_x_w[ch.clone()], &a.ln_x_b[ch], GN_EPS);
            let g = &g[(ti - from) * d + c0..];
            o.iter_mut().zip(g).for_each(|(o, g)| *o *= g);
        }
    };
    let out = sized(&mut sc.out, t * d);
    be.wkv(
        cfg.n_head,
        r,
        k,
        v,
        w,
        &a.faaaa,
        &mut st.wkv,
        out,
        Some(gated),
    );
    let out = &out[from * d..];
    let y = sized(&mut sc.y, (t - from) * d);
    be.matmul(&a.output, out, t - from, y);
    par_pieces(&mut x[from * d..], |i0, p| {
        p.iter_mut().zip(&y[i0..]).for_each(|(x, y)| *x += y)
    });
}

/// `x [T, D] += sigmoid(Wr xr) * (Wv relu(Wk xk)^2)` for the rows from `from` on (`from <=
/// T`); rows before it stay as they are (the token shift still reads row `from - 1`, and
/// the state takes the last row).
fn channel_mix(
    be: &dyn Backend,
    cfg: &Config,
    l: &Layer,
    x: &mut [f32],
    st: &mut LayerState,
    sc: &mut Scratch,
    from: usize,
) {
    let f = &l.ffn;
    let d = cfg.n_embd;
    let t = x.len() / d;
    let xx = sized(&mut sc.xx, t * d);
    xx.copy_from_slice(x);
    be.layer_norm(xx, &l.ln2_w, &l.ln2_b, LN_EPS);
    let sx = sized(&mut sc.sx, t * d);
    token_shift(xx, &mut st.ffn_shift, sx);
    let n = t - from;
    if n == 0 {
        return;
    }
    let (xx, sx) = (&xx[from * d..], &sx[from * d..]);
    let [xk, xr, ..] = &mut sc.mixed;
    let (xk, xr) = (sized(xk, n * d), sized(xr, n * d));
    mix(xx, sx, &f.maa_k, xk);
    mix(xx, sx, &f.maa_r, xr);
    let kk = sized(&mut sc.kk, n * cfg.ffn);
    let rr = sized(&mut sc.out, n * d);
    let relu2: Then = &|_, _, y| y.iter_mut().for_each(|v| *v = v.max(0.0) * v.max(0.0));
    let gate_act: Then = &|_, _, y| y.iter_mut().for_each(|v| *v = sigmoid(*v));
    be.matmuls(
        n,
        &mut [
            MatJob::new(&f.key, xk, kk).then(relu2),
            MatJob::new(&f.receptance, xr, rr).then(gate_act),
        ],
    );
    let rr = &*rr;
    let gate: Then = &|ti, c0, y| {
        let r = &rr[ti * d + c0..];
        y.iter_mut().zip(r).for_each(|(v, r)| *v *= r);
    };
    let vv = sized(&mut sc.y, n * d);
    be.matmuls(n, &mut [MatJob::new(&f.value, kk, vv).then(gate)]);
    par_pieces(&mut x[from * d..], |i0, p| {
        p.iter_mut().zip(&vv[i0..]).for_each(|(x, v)| *x += v)
    });
}
