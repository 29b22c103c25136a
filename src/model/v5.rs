//! RWKV-5.2 ("Eagle", x052, the RWKV-5 World v2 models): the weights, read from a checkpoint
//! by name, and the forward pass, written once over the [`Backend`] interface. The math is
//! `docs/RWKV5.md`: RWKV-6's recurrence with a fixed per-channel decay, static token-shift
//! mixes, and RWKV-6's channel mix.
//!
//! Notation: `D` width, `H` heads of size `S`, `F` FFN width, `V` vocab, `T` rows of the
//! call (tokens of all its streams).

use super::checkpoint::Checkpoint;
use super::ends::{self, Ends};
use super::engine::version;
use super::ffn::{self, Ffn, Mixing};
use super::load::{in_layers, Affine, Loader};
use super::names::Names;
use super::version::{Config, Family, Layers, Pass, Version};
use crate::backend::{Backend, Decay, Mix, NormShift, Product, Rows, RowsMut, Then, Wkv6};
use crate::error::{Error, Result};

pub use super::ends::LN_EPS;
/// GroupNorm (ln_x) epsilon: the official package's, with no division by
/// `head_size_divisor` (equal to the training code's `GroupNorm(eps=1e-5)(x / 8)`).
pub const GN_EPS: f32 = 64e-5;

/// RWKV-5.2 as the registry lists it.
pub static VERSION: Version = version::<X052>();

/// The RWKV-5.2 family (x052).
pub struct X052;

impl Family for X052 {
    const NAME: &'static str = "rwkv5";
    const TITLE: &'static str = "RWKV-5.2";
    type Weights<B: Backend> = Weights<B>;

    /// A group norm and a gate without RWKV-6's `time_maa_x` or RWKV-7's `k_k`; 5.0 and
    /// 5.1 are refused before this ([`super::names::refuse_variants`]).
    fn recognise(names: &Names) -> bool {
        names.contains("blocks.0.att.ln_x.weight")
            && names.contains("blocks.0.att.gate.weight")
            && !names.contains("blocks.0.att.time_maa_x")
            && !names.contains("blocks.0.att.k_k")
    }

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
        let faaaa = shape("blocks.0.att.time_faaaa")?;
        let ffn_key = shape("blocks.0.ffn.key.weight")?;
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
        Ok(Config {
            version: &VERSION,
            lora: [0; 4],
            n_layer: names.n_layers(&ck.path)?,
            n_embd: d,
            n_head: h,
            head_size: s,
            ffn: f,
            vocab,
        })
    }

    /// Every projection of the first `layers` layers, and the head.
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

    fn fingerprinted(cfg: &Config) -> Vec<String> {
        ends::fingerprinted(
            cfg.n_layer,
            &[
                "ln1.weight",
                "ln2.weight",
                "att.time_decay",
                "att.time_faaaa",
                "att.time_mix_k",
                "att.ln_x.weight",
                "ffn.time_mix_k",
                "ffn.time_mix_r",
            ],
        )
    }

    fn params(cfg: &Config) -> usize {
        let (d, f, v, l) = (cfg.n_embd, cfg.ffn, cfg.vocab, cfg.n_layer);
        let att = 5 * d * d + 8 * d;
        let ffn = 2 * d * f + d * d + 2 * d;
        2 * v * d + 4 * d + l * (att + ffn + 4 * d)
    }

    fn load<B: Backend>(l: &Loader<B>, cfg: &Config) -> Result<Weights<B>> {
        let (d, f, v) = (cfg.n_embd, cfg.ffn, cfg.vocab);
        let (h, s) = (cfg.n_head, cfg.head_size);
        let head = Ends::head(l, v, d)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blocks.{i}.{s}");
            let mix = |name: &str| Mixing::Mix.load(l, &p(name), d);
            let att = Att {
                mix: [
                    mix("att.time_mix_k")?,
                    mix("att.time_mix_v")?,
                    mix("att.time_mix_r")?,
                    mix("att.time_mix_g")?,
                ],
                decay: l
                    .be
                    .vector(&l.host_vector(&p("att.time_decay"), &[h, s])?)?,
                faaaa: l
                    .be
                    .vector(&l.host_vector(&p("att.time_faaaa"), &[h, s])?)?,
                receptance: l.matrix(&p("att.receptance.weight"), &[d, d])?,
                key: l.matrix(&p("att.key.weight"), &[d, d])?,
                value: l.matrix(&p("att.value.weight"), &[d, d])?,
                gate: l.matrix(&p("att.gate.weight"), &[d, d])?,
                output: l.matrix(&p("att.output.weight"), &[d, d])?,
                ln_x: l.affine(&p("att.ln_x"), d)?,
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
    /// `[4][D]`: the k, v, r, g token-shift mixes, as `maa` ([`Mixing::Mix`]).
    pub mix: [B::Tensor; 4],
    /// `[H, S]`: the decay as stored, used as `w = exp(-exp(time_decay))`.
    pub decay: B::Tensor,
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
    pub ends: Ends<B>,
}

/// A layer's activations, grown to the largest call and reused.
pub struct Scratch<B: Backend> {
    /// The normed input and its token shift `[T, D]`.
    xx: B::Tensor,
    sx: B::Tensor,
    /// The mixed inputs `[4][T, D]` (`k v r g`; the channel mix uses the first two).
    mixed: [B::Tensor; 4],
    /// `r k v g [T, D]`, the decay `[D]`.
    r: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    g: B::Tensor,
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
            mixed: std::array::from_fn(|_| t()),
            r: t(),
            k: t(),
            v: t(),
            g: t(),
            w: t(),
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
            r,
            k,
            v,
            g,
            w,
            out,
            y,
            kk,
            rr,
        } = sc;
        for x in [xx, sx, r, k, v, g, out, y, rr].into_iter().chain(mixed) {
            be.reserve(x, t * d)?;
        }
        be.reserve(w, d)?;
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
                ("att.gate.weight", &a.gate),
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
    /// `x [T, D] += Wo (GroupNorm(wkv(r, k, v)) * silu(Wg xg))` for the rows from `from` on
    /// (`from < T`); rows before it stay as they are, though the state takes every token.
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
            r,
            k,
            v,
            g,
            w,
            out,
            y,
            ..
        } = sc;
        let [xk, xv, xr, xg] = mixed;
        // xx = LayerNorm(x), sx = the previous row's xx - xx, each x_j = xx + sx * maa_j
        let mut mixes = [
            (&a.mix[0], xk),
            (&a.mix[1], xv),
            (&a.mix[2], xr),
            (&a.mix[3], xg),
        ]
        .map(|(maa, out)| Mix {
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
        let [xk, xv, xr, xg] = mixed.each_ref();
        // r, k, v, g = silu(.); r and g only from row `from`.
        let kp = product(&a.key, xk, k, 0..t, d, Then::None);
        let vp = product(&a.value, xv, v, 0..t, d, Then::None);
        let rp = product(&a.receptance, xr, r, from..t, d, Then::None);
        let gp = product(&a.gate, xg, g, from..t, d, Then::Silu);
        if from == 0 {
            be.products(prec, &mut [rp, kp, vp, gp])?;
        } else {
            be.products(prec, &mut [kp, vp])?;
            be.products(prec, &mut [rp, gp])?;
        }
        // The recurrence with w = exp(-exp(time_decay)), then GroupNorm and g.
        be.wkv6(
            prec,
            Wkv6 {
                heads: c.n_head,
                r: Rows::new(r, 0, t, d),
                k: Rows::new(k, 0, t, d),
                v: Rows::new(v, 0, t, d),
                decay: Decay::Fixed,
                decay_bias: &a.decay,
                w: RowsMut::new(w, 0, 1, d),
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

/// `y = w x` with `then`, over the same `rows` of `x` and `y` (`d` wide).
fn product<'a, B: Backend>(
    w: &'a B::Matrix,
    x: &'a B::Tensor,
    y: &'a mut B::Tensor,
    rows: std::ops::Range<usize>,
    d: usize,
    then: Then<'a, B::Tensor>,
) -> Product<'a, B> {
    Product {
        w,
        x: Rows::new(x, rows.start, rows.len(), d),
        y: RowsMut::new(y, rows.start, rows.len(), d),
        then,
    }
}
