//! RWKV-6 ("Finch", x060): the weights, read from a checkpoint by name, and the forward
//! pass, written once over the [`Backend`] interface. The math is `docs/RWKV6.md`.
//!
//! Notation: `D` width, `H` heads of size `S`, `F` FFN width, `V` vocab, `M` mix-LoRA
//! width, `K` decay-LoRA width, `T` rows of the call (tokens of all its streams).

use super::checkpoint::Checkpoint;
use super::ends::{self, Ends};
use super::engine::version;
use super::ffn::{self, Ffn, Mixing};
use super::load::{in_layers, Affine, Loader};
use super::names::Names;
use super::version::{Config, Family, Layers, Pass, Tuning, Version};
use crate::backend::{
    Backend, Decay, Lora, Mix, NormShift, Product, Rows, RowsMut, Then, Up, Wkv6,
};
use crate::error::Result;

/// LayerNorm epsilon.
pub use super::ends::LN_EPS;
/// GroupNorm (ln_x) epsilon.
pub const GN_EPS: f32 = 64e-5;

/// RWKV-6 as the registry lists it.
pub static VERSION: Version = version::<X060>();

/// The RWKV-6 family (x060).
pub struct X060;

impl Family for X060 {
    const NAME: &'static str = "rwkv6";
    const TITLE: &'static str = "RWKV-6";
    /// RWKV-PEFT saves `[head, value, key]`, the transpose of this state's `[head, key,
    /// value]`; Ai00 `.st` files hold this state's order.
    const TUNING: Option<Tuning> = Some(Tuning {
        tensor: "att.time_state",
        pth_transposed: true,
        st_transposed: false,
    });
    type Weights<B: Backend> = Weights<B>;

    fn recognise(names: &Names) -> bool {
        names.contains("blocks.0.att.time_maa_x")
    }

    /// The hyper-parameters, read from the tensor shapes; the LoRA widths are `[M, K]`.
    fn config(ck: &Checkpoint, names: &Names) -> Result<Config> {
        let shape =
            |canon: &str| -> Result<Vec<usize>> { ck.logical_shape_of(names.stored(canon)) };
        let bad = |name: &str, found: &[usize], expected: String| crate::error::Error::Shape {
            path: ck.path.clone(),
            name: names.stored(name).to_string(),
            expected,
            found: found.to_vec(),
        };
        let emb = shape("emb.weight")?;
        let faaaa = shape("blocks.0.att.time_faaaa")?;
        let ffn_key = shape("blocks.0.ffn.key.weight")?;
        let decay_w1 = shape("blocks.0.att.time_decay_w1")?;
        let maa_w2 = shape("blocks.0.att.time_maa_w2")?;
        let [vocab, d] = emb[..] else {
            return Err(bad("emb.weight", &emb, "[V, D]".to_string()));
        };
        let [h, s] = faaaa[..] else {
            return Err(bad(
                "blocks.0.att.time_faaaa",
                &faaaa,
                format!("[H, S] with H * S = {d}"),
            ));
        };
        if h.checked_mul(s) != Some(d) {
            return Err(bad(
                "blocks.0.att.time_faaaa",
                &faaaa,
                format!("[H, S] with H * S = {d}"),
            ));
        }
        let [f, _] = ffn_key[..] else {
            return Err(bad(
                "blocks.0.ffn.key.weight",
                &ffn_key,
                format!("[F, {d}]"),
            ));
        };
        // decay_w1 is [D, K] (BlinkDL, HF) or [K, D] (Ai00); maa_w2 is [5, M, D] or [5, D, M].
        let out_in = names.layout.lora_is_out_in();
        let (k, m) = match (&decay_w1[..], &maa_w2[..], out_in) {
            (&[_, k], &[5, m, _], false) => (k, m),
            (&[k, _], &[5, _, m], true) => (k, m),
            (&[_, _], _, _) => {
                return Err(bad(
                    "blocks.0.att.time_maa_w2",
                    &maa_w2,
                    format!("[5, M, {d}]"),
                ))
            }
            _ => {
                return Err(bad(
                    "blocks.0.att.time_decay_w1",
                    &decay_w1,
                    format!("[{d}, K]"),
                ))
            }
        };
        Ok(Config {
            version: &VERSION,
            lora: [m, k, 0, 0],
            n_layer: names.n_layers(&ck.path)?,
            n_embd: d,
            n_head: h,
            head_size: s,
            ffn: f,
            vocab,
        })
    }

    /// The matrices `--quant` quantizes: every projection of the first `layers` layers, and
    /// the head. The embedding (read a row at a time), the LoRA matrices and the vectors keep
    /// their stored precision.
    fn quantizable(canon: &str, layers: usize) -> bool {
        const PROJECTIONS: [&str; 8] = [
            "att.receptance.weight",
            "att.key.weight",
            "att.value.weight",
            "att.gate.weight",
            "att.output.weight",
            "ffn.key.weight",
            "ffn.receptance.weight",
            "ffn.value.weight",
        ];
        canon == "head.weight" || in_layers(canon, layers, &PROJECTIONS)
    }

    /// The per-channel vectors the model fingerprint hashes, in order.
    fn fingerprinted(cfg: &Config) -> Vec<String> {
        ends::fingerprinted(
            cfg.n_layer,
            &[
                "ln1.weight",
                "ln2.weight",
                "att.time_decay",
                "att.time_faaaa",
                "att.time_maa_x",
                "att.ln_x.weight",
                "ffn.time_maa_k",
                "ffn.time_maa_r",
            ],
        )
    }

    fn params(cfg: &Config) -> usize {
        let (d, f, v, l) = (cfg.n_embd, cfg.ffn, cfg.vocab, cfg.n_layer);
        let [m, k, ..] = cfg.lora;
        let att = 5 * d * d + d * 5 * m + 5 * m * d + 2 * d * k + 10 * d;
        let ffn = 2 * d * f + d * d + 2 * d;
        2 * v * d + 4 * d + l * (att + ffn + 4 * d)
    }

    /// Build the weights of every layer on `l`'s backend, checking every shape against `cfg`.
    fn load<B: Backend>(l: &Loader<B>, cfg: &Config) -> Result<Weights<B>> {
        let [m, k, ..] = cfg.lora;
        let (d, f, v) = (cfg.n_embd, cfg.ffn, cfg.vocab);
        let out_in = l.names.layout.lora_is_out_in();
        let head = Ends::head(l, v, d)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blocks.{i}.{s}");
            let w2_name = p("att.time_maa_w2");
            let w2_all = if out_in {
                l.host_matrix(&w2_name, &[5, d, m])?
            } else {
                l.host_matrix(&w2_name, &[5, m, d])?
            };
            let w2_rows = w2_all.rows / 5;
            let w2 = |j: usize| {
                let slice = w2_all.row_block(j * w2_rows, w2_rows);
                l.be.matrix(if out_in { slice } else { slice.transposed() })
            };
            let maa_w2 = [w2(0)?, w2(1)?, w2(2)?, w2(3)?, w2(4)?];
            if !out_in {
                l.ck.release(l.names.stored(&w2_name));
            }
            let att = Att {
                maa_x: l.vector(&p("att.time_maa_x"), d)?,
                maa: [
                    l.vector(&p("att.time_maa_w"), d)?,
                    l.vector(&p("att.time_maa_k"), d)?,
                    l.vector(&p("att.time_maa_v"), d)?,
                    l.vector(&p("att.time_maa_r"), d)?,
                    l.vector(&p("att.time_maa_g"), d)?,
                ],
                maa_w1: l.lora(&p("att.time_maa_w1"), d, 5 * m)?,
                maa_w2,
                decay: l.vector(&p("att.time_decay"), d)?,
                decay_w1: l.lora(&p("att.time_decay_w1"), d, k)?,
                decay_w2: l.lora(&p("att.time_decay_w2"), k, d)?,
                faaaa: l
                    .be
                    .vector(&l.host_vector(&p("att.time_faaaa"), &[cfg.n_head, cfg.head_size])?)?,
                receptance: l.matrix(&p("att.receptance.weight"), &[d, d])?,
                key: l.matrix(&p("att.key.weight"), &[d, d])?,
                value: l.matrix(&p("att.value.weight"), &[d, d])?,
                gate: l.matrix(&p("att.gate.weight"), &[d, d])?,
                output: l.matrix(&p("att.output.weight"), &[d, d])?,
                ln_x: l.affine(&p("att.ln_x"), d)?,
            };
            let ffn = Ffn::load(l, i, d, f, Mixing::Maa)?;
            layers.push(Layer {
                ln1: l.affine(&p("ln1"), d)?,
                ln2: l.affine(&p("ln2"), d)?,
                att,
                ffn,
            });
        }
        Ok(Weights {
            cfg: *cfg,
            layers,
            ends: Ends::load(l, head, v, d)?,
        })
    }
}

/// Time mix (attention) weights of one layer.
pub struct Att<B: Backend> {
    /// `[D]`: the mix of the LoRA's input.
    pub maa_x: B::Tensor,
    /// `[5][D]`: the w, k, v, r, g mixes, in that order.
    pub maa: [B::Tensor; 5],
    /// `[5M, D]`: mix LoRA down.
    pub maa_w1: B::Matrix,
    /// 5 x `[D, M]`: mix LoRA up, for w, k, v, r, g.
    pub maa_w2: [B::Matrix; 5],
    /// `[D]`: the decay's bias.
    pub decay: B::Tensor,
    /// `[K, D]`: decay LoRA down.
    pub decay_w1: B::Matrix,
    /// `[D, K]`: decay LoRA up.
    pub decay_w2: B::Matrix,
    /// `[H, S]`: the current token's bonus `u`.
    pub faaaa: B::Tensor,
    /// `[D, D]` each.
    pub receptance: B::Matrix,
    pub key: B::Matrix,
    pub value: B::Matrix,
    pub gate: B::Matrix,
    pub output: B::Matrix,
    /// GroupNorm's affine part.
    pub ln_x: Affine<B>,
}

pub struct Layer<B: Backend> {
    pub ln1: Affine<B>,
    pub ln2: Affine<B>,
    pub att: Att<B>,
    pub ffn: Ffn<B>,
}

pub struct Weights<B: Backend> {
    pub cfg: Config,
    pub layers: Vec<Layer<B>>,
    /// The embedding and the head.
    pub ends: Ends<B>,
}

/// The activations of a layer, grown to the largest call and reused, so that generating a
/// token allocates nothing but the logits it returns.
pub struct Scratch<B: Backend> {
    /// The normed input and its token shift `[T, D]`.
    xx: B::Tensor,
    sx: B::Tensor,
    /// The mix LoRA's input `[T, D]` and hidden layer `[T, 5M]`.
    xxx: B::Tensor,
    lora: B::Tensor,
    /// The mixed inputs `[5][T, D]` (`w k v r g`; the channel mix uses the first two).
    mixed: [B::Tensor; 5],
    /// `r k v g [T, D]`, the decay LoRA's hidden layer `[T, K]`, the decay `[T, D]`.
    r: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    g: B::Tensor,
    dl: B::Tensor,
    w: B::Tensor,
    /// The recurrence's output, a projection's, `[T, D]`.
    out: B::Tensor,
    y: B::Tensor,
    /// Channel mix: the key `[T, F]` and the receptance `[T, D]`.
    kk: B::Tensor,
    rr: B::Tensor,
}

impl<B: Backend> Layers<B> for Weights<B> {
    type Scratch = Scratch<B>;

    fn scratch(&self, be: &B) -> Scratch<B> {
        let t = || be.tensor();
        Scratch {
            xx: t(),
            sx: t(),
            xxx: t(),
            lora: t(),
            mixed: std::array::from_fn(|_| t()),
            r: t(),
            k: t(),
            v: t(),
            g: t(),
            dl: t(),
            w: t(),
            out: t(),
            y: t(),
            kk: t(),
            rr: t(),
        }
    }

    fn reserve(&self, be: &B, sc: &mut Scratch<B>, t: usize) -> Result<()> {
        let c = &self.cfg;
        let d = c.n_embd;
        let [m, k, ..] = c.lora;
        for x in [&mut sc.xx, &mut sc.sx, &mut sc.xxx, &mut sc.r, &mut sc.k] {
            be.reserve(x, t * d)?;
        }
        for x in [
            &mut sc.v,
            &mut sc.g,
            &mut sc.w,
            &mut sc.out,
            &mut sc.y,
            &mut sc.rr,
        ] {
            be.reserve(x, t * d)?;
        }
        for x in &mut sc.mixed {
            be.reserve(x, t * d)?;
        }
        be.reserve(&mut sc.lora, t * 5 * m)?;
        be.reserve(&mut sc.dl, t * k)?;
        be.reserve(&mut sc.kk, t * c.ffn)
    }

    fn ends(&self) -> &Ends<B> {
        &self.ends
    }

    fn depth(&self) -> usize {
        self.layers.len()
    }

    fn matrices(&self) -> Vec<(String, &B::Matrix)> {
        let mut v = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let (a, f) = (&l.att, &l.ffn);
            let mut add = |name: &str, m| v.push((format!("blocks.{i}.{name}"), m));
            add("att.time_maa_w1", &a.maa_w1);
            for (j, w) in ["w", "k", "v", "r", "g"].iter().zip(&a.maa_w2) {
                add(&format!("att.time_maa_w2.{j}"), w);
            }
            add("att.time_decay_w1", &a.decay_w1);
            add("att.time_decay_w2", &a.decay_w2);
            add("att.receptance.weight", &a.receptance);
            add("att.key.weight", &a.key);
            add("att.value.weight", &a.value);
            add("att.gate.weight", &a.gate);
            add("att.output.weight", &a.output);
            f.matrices(i, &mut v);
        }
        v
    }

    fn layer(
        &self,
        be: &B,
        i: usize,
        x: &mut B::Tensor,
        sc: &mut Scratch<B>,
        pass: Pass<'_, B>,
        states: &mut [&mut B::State],
    ) -> Result<()> {
        let layer = &self.layers[i];
        self.time_mix(be, layer, i, x, sc, pass, states)?;
        let Scratch {
            xx,
            sx,
            mixed: [xk, xr, ..],
            kk,
            rr,
            y,
            ..
        } = sc;
        let bufs = ffn::Bufs {
            xx,
            sx,
            xk,
            xr,
            kk,
            rr,
            y,
        };
        let shape = self.cfg.state_shape();
        layer
            .ffn
            .forward(be, &layer.ln2, shape, i, x, bufs, pass, states)
    }
}

impl<B: Backend> Weights<B> {
    /// `x [T, D] += Wo (GroupNorm(wkv(r, k, v, w)) * g)` for the rows from `from` on (`from
    /// < T`); rows before it stay as they are, though the state takes every token.
    #[allow(clippy::too_many_arguments)]
    fn time_mix(
        &self,
        be: &B,
        l: &Layer<B>,
        layer: usize,
        x: &mut B::Tensor,
        sc: &mut Scratch<B>,
        pass: Pass<'_, B>,
        states: &mut [&mut B::State],
    ) -> Result<()> {
        let Pass {
            t,
            batch,
            prec,
            rows: (from, _),
            ..
        } = pass;
        let (a, c) = (&l.att, &self.cfg);
        let (d, n) = (c.n_embd, t - from);
        let Scratch {
            xx,
            sx,
            xxx,
            lora,
            mixed,
            r,
            k,
            v,
            g,
            dl,
            w,
            out,
            y,
            ..
        } = sc;
        let rows = |x| first(x, t, d);
        // xx = LayerNorm(x), sx = the previous row's xx - xx, xxx = xx + sx * maa_x
        be.norm_shift(
            NormShift {
                x: rows(x),
                ln: l.ln1.norm(LN_EPS),
                shift: c.state_shape().att_shift(layer),
                xx: RowsMut::new(xx, 0, t, d),
                sx: RowsMut::new(sx, 0, t, d),
                from: 0,
                mixes: &mut [Mix {
                    maa: &a.maa_x,
                    out: RowsMut::new(xxx, 0, t, d),
                }],
            },
            batch,
            states,
        )?;
        // The data-dependent mixes: m = tanh(xxx @ maa_w1), each x_j = xx + sx * (maa_j +
        // m_j @ maa_w2[j]).
        let (xx, sx) = (&*xx, &*sx);
        let [m, dk, ..] = c.lora;
        let mut ys = mixed.iter_mut().enumerate();
        let mut ups: [Up<B>; 5] = std::array::from_fn(|_| {
            let (j, y) = ys.next().expect("five mixes");
            Up {
                w: &a.maa_w2[j],
                from: j * m,
                y: RowsMut::new(y, 0, t, d),
                then: Then::Mix {
                    xx: first(xx, t, d),
                    sx: first(sx, t, d),
                    maa: &a.maa[j],
                },
            }
        });
        be.lora(
            prec,
            Lora {
                x: rows(xxx),
                down: &a.maa_w1,
                act: Then::Tanh,
                hidden: lora,
                ups: &mut ups,
            },
        )?;
        drop((ups, ys));
        let [xw, xk, xv, xr, xg] = mixed.each_ref();
        // r, k, v, g = silu(.), and the decay LoRA's hidden layer tanh(xw @ decay_w1); r and
        // g only from row `from`.
        let kp = Product {
            w: &a.key,
            x: rows(xk),
            y: RowsMut::new(k, 0, t, d),
            then: Then::None,
        };
        let vp = Product {
            w: &a.value,
            x: rows(xv),
            y: RowsMut::new(v, 0, t, d),
            then: Then::None,
        };
        let dp = Product {
            w: &a.decay_w1,
            x: rows(xw),
            y: RowsMut::new(dl, 0, t, dk),
            then: Then::Tanh,
        };
        let rp = Product {
            w: &a.receptance,
            x: Rows::new(xr, from, n, d),
            y: RowsMut::new(r, from, n, d),
            then: Then::None,
        };
        let gp = Product {
            w: &a.gate,
            x: Rows::new(xg, from, n, d),
            y: RowsMut::new(g, from, n, d),
            then: Then::Silu,
        };
        if from == 0 {
            be.products(prec, &mut [rp, kp, vp, gp, dp])?;
        } else {
            be.products(prec, &mut [kp, vp, dp])?;
            be.products(prec, &mut [rp, gp])?;
        }
        // The recurrence with w = exp(-exp(decay + dl @ decay_w2)), then GroupNorm and g.
        be.wkv6(
            prec,
            Wkv6 {
                heads: c.n_head,
                r: rows(r),
                k: rows(k),
                v: rows(v),
                decay: Decay::Lora {
                    hidden: Rows::new(dl, 0, t, dk),
                    up: &a.decay_w2,
                },
                decay_bias: &a.decay,
                w: RowsMut::new(w, 0, t, d),
                u: &a.faaaa,
                state: c.state_shape().wkv(layer),
                out: RowsMut::new(out, 0, t, d),
                ln_x: a.ln_x.norm(GN_EPS),
                g: Rows::new(g, from, n, d),
                from,
            },
            batch,
            states,
        )?;
        be.products(
            prec,
            &mut [Product {
                w: &a.output,
                x: Rows::new(out, from, n, d),
                y: RowsMut::new(y, 0, n, d),
                then: Then::Residual(RowsMut::new(x, from, n, d)),
            }],
        )
    }
}

/// The first `rows` rows of `cols` values of `x`.
fn first<T>(x: &T, rows: usize, cols: usize) -> Rows<'_, T> {
    Rows::new(x, 0, rows, cols)
}
