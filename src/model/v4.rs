//! RWKV-4 (the Pile, Raven and World v1 models): the weights, read from a checkpoint by
//! name, and the forward pass, written once over the [`Backend`] interface. The math is
//! `docs/RWKV4.md`: a per-channel recurrence with a numerically stable state
//! ([`crate::backend::Wkv4`]), static token-shift mixes, and the channel mix RWKV-5.2 and
//! RWKV-6 share.
//!
//! Notation: `D` width, `F` FFN width, `V` vocab, `T` rows of the call.

use super::checkpoint::Checkpoint;
use super::ends::{self, Ends};
use super::engine::version;
use super::ffn::{self, Ffn, Mixing};
use super::load::{in_layers, Affine, Loader};
use super::names::Names;
use super::version::{Config, Family, Layers, Pass, Version};
use crate::backend::{Backend, Mix, NormShift, Product, Recurrence, Rows, RowsMut, Then, Wkv4};
use crate::error::{Error, Result};

pub use super::ends::LN_EPS;

/// RWKV-4 as the registry lists it.
pub static VERSION: Version = version::<X040>();

/// The RWKV-4 family.
pub struct X040;

impl Family for X040 {
    const NAME: &'static str = "rwkv4";
    const TITLE: &'static str = "RWKV-4";
    const RECURRENCE: Recurrence = Recurrence::Channels;
    type Weights<B: Backend> = Weights<B>;

    /// `att.time_first` and `att.time_mix_k`, without RWKV-5's group norm.
    fn recognise(names: &Names) -> bool {
        names.contains("blocks.0.att.time_first")
            && names.contains("blocks.0.att.time_mix_k")
            && !names.contains("blocks.0.att.ln_x.weight")
    }

    /// The hyper-parameters; the recurrence is per channel, so one "head" of width `D`.
    fn config(ck: &Checkpoint, names: &Names) -> Result<Config> {
        let shape =
            |canon: &str| -> Result<Vec<usize>> { ck.logical_shape_of(names.stored(canon)) };
        let bad = |name: &str, found: &[usize], expected: String| Error::Shape {
            path: ck.path.clone(),
            name: names.stored(name).to_string(),
            expected,
            found: found.to_vec(),
        };
        let emb = shape("emb.weight")?;
        let ffn_key = shape("blocks.0.ffn.key.weight")?;
        let [vocab, d] = emb[..] else {
            return Err(bad("emb.weight", &emb, "[V, D]".to_string()));
        };
        let [f, _] = ffn_key[..] else {
            return Err(bad(
                "blocks.0.ffn.key.weight",
                &ffn_key,
                Error::dims(&[4 * d, d]),
            ));
        };
        Ok(Config {
            version: &VERSION,
            lora: [0; 4],
            n_layer: names.n_layers(&ck.path)?,
            n_embd: d,
            n_head: 1,
            head_size: d,
            ffn: f,
            vocab,
        })
    }

    /// Every projection of the first `layers` layers, and the head.
    fn quantizable(canon: &str, layers: usize) -> bool {
        const PROJECTIONS: [&str; 7] = [
            "att.receptance.weight",
            "att.key.weight",
            "att.value.weight",
            "att.output.weight",
            "ffn.key.weight",
            "ffn.receptance.weight",
            "ffn.value.weight",
        ];
        canon == "head.weight" || in_layers(canon, layers, &PROJECTIONS)
    }

    fn fingerprinted(cfg: &Config) -> Vec<String> {
        ends::fingerprinted(
            cfg.n_layer,
            &[
                "ln1.weight",
                "ln2.weight",
                "att.time_decay",
                "att.time_first",
                "att.time_mix_k",
                "ffn.time_mix_k",
                "ffn.time_mix_r",
            ],
        )
    }

    fn params(cfg: &Config) -> usize {
        let (d, f, v, l) = (cfg.n_embd, cfg.ffn, cfg.vocab, cfg.n_layer);
        let att = 4 * d * d + 5 * d;
        let ffn = 2 * d * f + d * d + 2 * d;
        2 * v * d + 4 * d + l * (att + ffn + 4 * d)
    }

    fn load<B: Backend>(l: &Loader<B>, cfg: &Config) -> Result<Weights<B>> {
        let (d, f, v) = (cfg.n_embd, cfg.ffn, cfg.vocab);
        let head = Ends::head(l, v, d)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blocks.{i}.{s}");
            let mix = |name: &str| Mixing::Mix.load(l, &p(name), d);
            let decay = l.host_vector(&p("att.time_decay"), &[d])?;
            let w: Vec<f32> = decay.iter().map(|x| -x.exp()).collect();
            let att = Att {
                mix: [
                    mix("att.time_mix_k")?,
                    mix("att.time_mix_v")?,
                    mix("att.time_mix_r")?,
                ],
                w: l.be.vector(&w)?,
                u: l.vector(&p("att.time_first"), d)?,
                receptance: l.matrix(&p("att.receptance.weight"), &[d, d])?,
                key: l.matrix(&p("att.key.weight"), &[d, d])?,
                value: l.matrix(&p("att.value.weight"), &[d, d])?,
                output: l.matrix(&p("att.output.weight"), &[d, d])?,
            };
            layers.push(Layer {
                ln1: l.affine(&p("ln1"), d)?,
                ln2: l.affine(&p("ln2"), d)?,
                att,
                ffn: Ffn::load(l, i, d, f, Mixing::Mix)?,
            });
        }
        Ok(Weights {
            cfg: *cfg,
            layers,
            ends: Ends::load(l, head, v, d)?,
        })
    }
}

/// Time mix weights of one layer.
pub struct Att<B: Backend> {
    /// `[3][D]`: the k, v, r token-shift mixes, as `maa` ([`Mixing::Mix`]).
    pub mix: [B::Tensor; 3],
    /// `[D]`: the decay `-exp(time_decay)`, and the current token's bonus `time_first`.
    pub w: B::Tensor,
    pub u: B::Tensor,
    /// `[D, D]` each.
    pub receptance: B::Matrix,
    pub key: B::Matrix,
    pub value: B::Matrix,
    pub output: B::Matrix,
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
    pub ends: Ends<B>,
}

/// A layer's activations, grown to the largest call and reused.
pub struct Scratch<B: Backend> {
    /// The normed input and its token shift `[T, D]`.
    xx: B::Tensor,
    sx: B::Tensor,
    /// The mixed inputs `[3][T, D]` (`k v r`; the channel mix uses the first two).
    mixed: [B::Tensor; 3],
    /// `k v r [T, D]`, the recurrence's output and a projection's `[T, D]`.
    k: B::Tensor,
    v: B::Tensor,
    r: B::Tensor,
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
            mixed: std::array::from_fn(|_| t()),
            k: t(),
            v: t(),
            r: t(),
            out: t(),
            y: t(),
            kk: t(),
            rr: t(),
        }
    }

    fn reserve(&self, be: &B, sc: &mut Scratch<B>, t: usize) -> Result<()> {
        let d = self.cfg.n_embd;
        let Scratch {
            xx,
            sx,
            mixed,
            k,
            v,
            r,
            out,
            y,
            kk,
            rr,
        } = sc;
        for x in [xx, sx, k, v, r, out, y, rr].into_iter().chain(mixed) {
            be.reserve(x, t * d)?;
        }
        be.reserve(kk, t * self.cfg.ffn)
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
            let a = &l.att;
            for (name, m) in [
                ("att.receptance.weight", &a.receptance),
                ("att.key.weight", &a.key),
                ("att.value.weight", &a.value),
                ("att.output.weight", &a.output),
            ] {
                v.push((format!("blocks.{i}.{name}"), m));
            }
            l.ffn.matrices(i, &mut v);
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
    /// `x [T, D] += Wo (sigmoid(Wr xr) * wkv(k, v))` for the rows from `from` on (`from <
    /// T`); rows before it stay as they are, though the state takes every token.
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
            mixed,
            k,
            v,
            r,
            out,
            y,
            ..
        } = sc;
        let [xk, xv, xr] = mixed;
        // xx = LayerNorm(x), sx = the previous row's xx - xx, each x_j = xx + sx * maa_j
        let mut mixes = [(&a.mix[0], xk), (&a.mix[1], xv), (&a.mix[2], xr)].map(|(maa, out)| Mix {
            maa,
            out: RowsMut::new(out, 0, t, d),
        });
        be.norm_shift(
            NormShift {
                x: Rows::new(x, 0, t, d),
                ln: l.ln1.norm(LN_EPS),
                shift: c.state_shape().att_shift(layer),
                xx: RowsMut::new(xx, 0, t, d),
                sx: RowsMut::new(sx, 0, t, d),
                from: 0,
                mixes: &mut mixes,
            },
            batch,
            states,
        )?;
        let [xk, xv, xr] = mixed.each_ref();
        // k, v for every row; r = sigmoid(.) from row `from` (its row 0 row `from`).
        let kp = Product {
            w: &a.key,
            x: Rows::new(xk, 0, t, d),
            y: RowsMut::new(k, 0, t, d),
            then: Then::None,
        };
        let vp = Product {
            w: &a.value,
            x: Rows::new(xv, 0, t, d),
            y: RowsMut::new(v, 0, t, d),
            then: Then::None,
        };
        let rp = Product {
            w: &a.receptance,
            x: Rows::new(xr, from, n, d),
            y: RowsMut::new(r, 0, n, d),
            then: Then::Sigmoid,
        };
        if from == 0 {
            be.products(prec, &mut [rp, kp, vp])?;
        } else {
            be.products(prec, &mut [kp, vp])?;
            be.products(prec, &mut [rp])?;
        }
        be.wkv4(
            Wkv4 {
                k: Rows::new(k, 0, t, d),
                v: Rows::new(v, 0, t, d),
                r: Rows::new(r, 0, n, d),
                w: &a.w,
                u: &a.u,
                state: c.state_shape().wkv(layer),
                out: RowsMut::new(out, 0, t, d),
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
