//! RWKV-7 ("Goose", x070): the weights, read from a checkpoint by name, and the forward
//! pass, written once over the [`Backend`] interface. The math is `docs/RWKV7.md`.
//!
//! Notation: `D` width, `H` heads of size `N`, `F` FFN width, `V` vocab, `T` rows of the
//! call (tokens of all its streams); `Dw`, `Da`, `Dv`, `Dg` the widths of the decay,
//! learning-rate, value-residual and gate LoRAs, read from each tensor's shape.

use super::checkpoint::Checkpoint;
use super::deep_embed::{self, DeepEmbed};
use super::ends::{self, Ends};
use super::engine::version;
use super::load::{in_layers, Affine, Loader};
use super::names::Names;
use super::version::{Config, Family, Layers, Pass, Tuning, Version};
use crate::backend::{Backend, Mix, NormShift, Product, Rows, RowsMut, Then, Wkv7};
use crate::error::Result;

/// LayerNorm epsilon.
pub use super::ends::LN_EPS;
/// GroupNorm (ln_x) epsilon.
pub const GN_EPS: f32 = 64e-5;

/// RWKV-7 as the registry lists it.
pub static VERSION: Version = version::<X070>();

/// The RWKV-7 family (x070).
pub struct X070;

impl Family for X070 {
    const NAME: &'static str = "rwkv7";
    const TITLE: &'static str = "RWKV-7";
    /// RWKV-PEFT trains `[head, value, key]`, this state's own order: its Triton kernel
    /// reads the tensor as `state[value][key]`, its FLA path hands FLA (`[key, value]`) the
    /// transpose. Ai00 `.st` files hold `[head, key, value]` (web-rwkv's `read_state` and its
    /// v7 kernel, whose state rows are keys, treat them as RWKV-6's): the transpose.
    const TUNING: Option<Tuning> = Some(Tuning {
        tensor: "att.time_state",
        pth_transposed: false,
        st_transposed: true,
    });
    type Weights<B: Backend> = Weights<B>;

    fn recognise(names: &Names) -> bool {
        names.contains("blocks.0.att.k_k")
    }

    /// The hyper-parameters, read from the tensor shapes (`H, N` from `r_k`, the LoRA widths
    /// from their up-projections; `Dv` from layer 1, as layer 0 has no value residual). The
    /// LoRA widths are `[Dw, Da, Dv, Dg]`.
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
        let [vocab, d] = emb[..] else {
            return Err(bad("emb.weight", &emb, "[V, D]".to_string()));
        };
        let r_k = shape("blocks.0.att.r_k")?;
        let [h, n] = r_k[..] else {
            return Err(bad(
                "blocks.0.att.r_k",
                &r_k,
                format!("[H, S] with H * S = {d}"),
            ));
        };
        if h.checked_mul(n) != Some(d) {
            return Err(bad(
                "blocks.0.att.r_k",
                &r_k,
                format!("[H, S] with H * S = {d}"),
            ));
        }
        let ffn_key = shape("blocks.0.ffn.key.weight")?;
        let [f, _] = ffn_key[..] else {
            return Err(bad(
                "blocks.0.ffn.key.weight",
                &ffn_key,
                crate::error::Error::dims(&[4 * d, d]),
            ));
        };
        let out_in = names.layout.lora_is_out_in();
        let width = |name: &str| -> Result<usize> {
            match shape(name)?[..] {
                [w, _] if out_in => Ok(w),
                [_, w] => Ok(w),
                ref s => Err(bad(name, s, format!("[{d}, K]"))),
            }
        };
        let layers = names.n_layers(&ck.path)?;
        Ok(Config {
            version: &VERSION,
            lora: [
                width("blocks.0.att.w1")?,
                width("blocks.0.att.a1")?,
                if layers > 1 {
                    width("blocks.1.att.v1")?
                } else {
                    0
                },
                width("blocks.0.att.g1")?,
            ],
            n_layer: layers,
            n_embd: d,
            n_head: h,
            head_size: n,
            ffn: f,
            vocab,
        })
    }

    /// The matrices `--quant` quantizes: every projection of the first `layers` layers, and
    /// the head. The embedding, the LoRA matrices and the vectors keep their stored precision.
    fn quantizable(canon: &str, layers: usize) -> bool {
        const PROJECTIONS: [&str; 6] = [
            "att.receptance.weight",
            "att.key.weight",
            "att.value.weight",
            "att.output.weight",
            "ffn.key.weight",
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
                "att.w0",
                "att.a0",
                "att.k_k",
                "att.k_a",
                "att.r_k",
                "att.x_r",
                "att.ln_x.weight",
                "ffn.x_k",
            ],
        )
    }

    fn params(cfg: &Config) -> usize {
        let (d, f, v, l) = (cfg.n_embd, cfg.ffn, cfg.vocab, cfg.n_layer);
        let [w_lora, a_lora, v_lora, g_lora] = cfg.lora;
        let att = 4 * d * d + 2 * d * (w_lora + a_lora + g_lora) + 13 * d;
        let ffn = 2 * d * f + d;
        // layers 1.. add the value residual's LoRA and bias
        let residual = 2 * d * v_lora + d;
        2 * v * d + 4 * d + l * (att + ffn + 4 * d) + l.saturating_sub(1) * residual
    }

    /// Build the weights of every layer on `l`'s backend, checking every shape against `cfg`.
    fn load<B: Backend>(l: &Loader<B>, cfg: &Config) -> Result<Weights<B>> {
        let (d, f, v) = (cfg.n_embd, cfg.ffn, cfg.vocab);
        let head = Ends::head(l, v, d)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blocks.{i}.{s}");
            let vec = |s: &str| l.vector(&p(s), d);
            let value_residual = if i == 0 {
                None
            } else {
                Some(ValueResidual {
                    v0: vec("att.v0")?,
                    lora: lora_pair(l, &p("att.v"), d)?,
                })
            };
            let att = Att {
                x: [
                    vec("att.x_r")?,
                    vec("att.x_w")?,
                    vec("att.x_k")?,
                    vec("att.x_v")?,
                    vec("att.x_a")?,
                    vec("att.x_g")?,
                ],
                w0: vec("att.w0")?,
                a0: vec("att.a0")?,
                w: lora_pair(l, &p("att.w"), d)?,
                a: lora_pair(l, &p("att.a"), d)?,
                g: lora_pair(l, &p("att.g"), d)?,
                v: value_residual,
                k_k: vec("att.k_k")?,
                k_a: vec("att.k_a")?,
                r_k: l
                    .be
                    .vector(&l.host_vector(&p("att.r_k"), &[cfg.n_head, cfg.head_size])?)?,
                receptance: l.matrix(&p("att.receptance.weight"), &[d, d])?,
                key: l.matrix(&p("att.key.weight"), &[d, d])?,
                value: l.matrix(&p("att.value.weight"), &[d, d])?,
                output: l.matrix(&p("att.output.weight"), &[d, d])?,
                ln_x: l.affine(&p("att.ln_x"), d)?,
            };
            let ffn = Ffn {
                x_k: vec("ffn.x_k")?,
                key: l.matrix(&p("ffn.key.weight"), &[f, d])?,
                value: l.matrix(&p("ffn.value.weight"), &[d, f])?,
                deep: None,
            };
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

/// A LoRA used as `x @ w1 @ w2`: `down [W, D]` and `up [D, W]` as `Linear`s.
pub struct LoraPair<B: Backend> {
    pub down: B::Matrix,
    pub up: B::Matrix,
    /// `W`
    pub width: usize,
}

/// The value residual of layers 1 and on: `vg = sigmoid(v0 + (xv @ v1) @ v2)`.
pub struct ValueResidual<B: Backend> {
    /// `[D]`
    pub v0: B::Tensor,
    pub lora: LoraPair<B>,
}

/// Time mix (attention) weights of one layer.
pub struct Att<B: Backend> {
    /// `[6][D]`: the r, w, k, v, a, g token-shift mixes, in that order.
    pub x: [B::Tensor; 6],
    /// `[D]` each: the decay's and the learning rate's biases.
    pub w0: B::Tensor,
    pub a0: B::Tensor,
    pub w: LoraPair<B>,
    pub a: LoraPair<B>,
    pub g: LoraPair<B>,
    /// `None` in layer 0.
    pub v: Option<ValueResidual<B>>,
    /// `[D]` each: the removal key's scale, and how much `a` scales the key.
    pub k_k: B::Tensor,
    pub k_a: B::Tensor,
    /// `[H, N]`: the current token's bonus.
    pub r_k: B::Tensor,
    /// `[D, D]` each.
    pub receptance: B::Matrix,
    pub key: B::Matrix,
    pub value: B::Matrix,
    pub output: B::Matrix,
    /// GroupNorm's affine part.
    pub ln_x: Affine<B>,
}

/// Channel mix (FFN) weights of one layer.
pub struct Ffn<B: Backend> {
    /// `[D]`
    pub x_k: B::Tensor,
    /// `[F, D]`
    pub key: B::Matrix,
    /// `[D, F]`
    pub value: B::Matrix,
    /// RWKV-7a's per-token scale of the key ([`super::v7a`]).
    pub deep: Option<DeepEmbed<B>>,
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

/// A LoRA `prefix1 [D, W]`, `prefix2 [W, D]`, its width read from the tensor.
fn lora_pair<B: Backend>(l: &Loader<B>, prefix: &str, d: usize) -> Result<LoraPair<B>> {
    let down = format!("{prefix}1");
    let shape = l.ck.logical_shape_of(l.names.stored(&down))?;
    let width = match shape[..] {
        [w, _] if l.names.layout.lora_is_out_in() => w,
        [_, w] => w,
        _ => {
            return Err(crate::error::Error::Shape {
                path: l.ck.path.clone(),
                name: l.names.stored(&down).to_string(),
                expected: format!("[{d}, K]"),
                found: shape,
            })
        }
    };
    Ok(LoraPair {
        down: l.lora(&down, d, width)?,
        up: l.lora(&format!("{prefix}2"), width, d)?,
        width,
    })
}

/// The activations of a layer, grown to the largest call and reused, so that generating a
/// token allocates nothing but the logits it returns.
pub struct Scratch<B: Backend> {
    /// The normed input and its token shift `[T, D]`.
    xx: B::Tensor,
    sx: B::Tensor,
    /// The mixed inputs `[6][T, D]` (`r w k v a g`; the channel mix uses the first).
    mixed: [B::Tensor; 6],
    /// The LoRAs' hidden layers `[T, W]` (`w a v g`).
    hidden: [B::Tensor; 4],
    /// `r w k v a vg g [T, D]`, and layer 0's values.
    r: B::Tensor,
    w: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    a: B::Tensor,
    vg: B::Tensor,
    g: B::Tensor,
    v_first: B::Tensor,
    /// The recurrence's output, a projection's, `[T, D]`.
    out: B::Tensor,
    y: B::Tensor,
    /// Channel mix: the key `[T, F]`.
    kf: B::Tensor,
    /// RWKV-7a's (empty without it).
    deep: deep_embed::Scratch<B>,
}

impl<B: Backend> Layers<B> for Weights<B> {
    type Scratch = Scratch<B>;

    fn scratch(&self, be: &B) -> Scratch<B> {
        let t = || be.tensor();
        Scratch {
            xx: t(),
            sx: t(),
            mixed: std::array::from_fn(|_| t()),
            hidden: std::array::from_fn(|_| t()),
            r: t(),
            w: t(),
            k: t(),
            v: t(),
            a: t(),
            vg: t(),
            g: t(),
            v_first: t(),
            out: t(),
            y: t(),
            kf: t(),
            deep: deep_embed::Scratch::new(be),
        }
    }

    fn reserve(&self, be: &B, sc: &mut Scratch<B>, t: usize) -> Result<()> {
        let d = self.cfg.n_embd;
        for x in [&mut sc.xx, &mut sc.sx, &mut sc.r, &mut sc.w, &mut sc.k] {
            be.reserve(x, t * d)?;
        }
        for x in [&mut sc.v, &mut sc.a, &mut sc.vg, &mut sc.g, &mut sc.v_first] {
            be.reserve(x, t * d)?;
        }
        for x in [&mut sc.out, &mut sc.y] {
            be.reserve(x, t * d)?;
        }
        for x in &mut sc.mixed {
            be.reserve(x, t * d)?;
        }
        let widest = self.layers.iter().flat_map(|l| {
            let a = &l.att;
            [
                a.w.width,
                a.a.width,
                a.g.width,
                a.v.as_ref().map_or(0, |r| r.lora.width),
            ]
        });
        let widest = widest.max().unwrap_or(0);
        for x in &mut sc.hidden {
            be.reserve(x, t * widest)?;
        }
        if self.layers.iter().any(|l| l.ffn.deep.is_some()) {
            sc.deep.reserve(be, &self.cfg, t)?;
        }
        be.reserve(&mut sc.kf, t * self.cfg.ffn)
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
            for (name, lora) in [("w", &a.w), ("a", &a.a), ("g", &a.g)]
                .into_iter()
                .chain(a.v.as_ref().map(|r| ("v", &r.lora)))
            {
                add(&format!("att.{name}1"), &lora.down);
                add(&format!("att.{name}2"), &lora.up);
            }
            add("att.receptance.weight", &a.receptance);
            add("att.key.weight", &a.key);
            add("att.value.weight", &a.value);
            add("att.output.weight", &a.output);
            add("ffn.key.weight", &f.key);
            add("ffn.value.weight", &f.value);
            if let Some(deep) = &f.deep {
                deep.matrices(i, &mut v);
            }
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
        if i == 0 && layer.ffn.deep.is_some() {
            sc.deep.embed(be, &self.ends, pass.tokens)?;
        }
        self.time_mix(be, layer, i, x, sc, pass, states)?;
        self.channel_mix(be, layer, i, x, sc, pass, states)
    }
}

impl<B: Backend> Weights<B> {
    /// `x [T, D] += Wo wkv7(...)` for the rows from `from` on (`from < T`); rows before it
    /// stay as they are, though the state (and `v_first`) take every token.
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
        let (at, c) = (&l.att, &self.cfg);
        let (d, n) = (c.n_embd, t - from);
        let Scratch {
            xx,
            sx,
            mixed,
            hidden,
            r,
            w,
            k,
            v,
            a,
            vg,
            g,
            v_first,
            out,
            y,
            ..
        } = sc;
        // xx = LayerNorm(x), sx = the previous row's xx - xx, x_j = xx + sx * mix_j
        {
            let mut ys = mixed.iter_mut().zip(&at.x);
            let mut mixes: [Mix<B>; 6] = std::array::from_fn(|_| {
                let (out, maa) = ys.next().expect("six mixes");
                Mix {
                    maa,
                    out: RowsMut::new(out, 0, t, d),
                }
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
        }
        let [xr, xw, xk, xv, xa, xg] = mixed.each_ref();
        let [hw, ha, hv, hg] = hidden;
        // k, v and the LoRAs' hidden layers over every row; r and the gate's from `from`.
        {
            let kp = prod(
                &at.key,
                first(xk, t, d),
                RowsMut::new(k, 0, t, d),
                Then::None,
            );
            let vp = prod(
                &at.value,
                first(xv, t, d),
                RowsMut::new(v, 0, t, d),
                Then::None,
            );
            let wp = prod(
                &at.w.down,
                first(xw, t, d),
                RowsMut::new(&mut *hw, 0, t, at.w.width),
                Then::Tanh,
            );
            let ap = prod(
                &at.a.down,
                first(xa, t, d),
                RowsMut::new(&mut *ha, 0, t, at.a.width),
                Then::None,
            );
            let rp = prod(
                &at.receptance,
                Rows::new(xr, from, n, d),
                RowsMut::new(r, from, n, d),
                Then::None,
            );
            let gp = prod(
                &at.g.down,
                Rows::new(xg, from, n, d),
                RowsMut::new(&mut *hg, 0, n, at.g.width),
                Then::Sigmoid,
            );
            let vres = at.v.as_ref().map(|res| {
                let y = RowsMut::new(&mut *hv, 0, t, res.lora.width);
                prod(&res.lora.down, first(xv, t, d), y, Then::None)
            });
            match (vres, from == 0) {
                (Some(hp), true) => be.products(prec, &mut [kp, vp, wp, ap, hp, rp, gp])?,
                (None, true) => be.products(prec, &mut [kp, vp, wp, ap, rp, gp])?,
                (Some(hp), false) => {
                    be.products(prec, &mut [kp, vp, wp, ap, hp])?;
                    be.products(prec, &mut [rp, gp])?;
                }
                (None, false) => {
                    be.products(prec, &mut [kp, vp, wp, ap])?;
                    be.products(prec, &mut [rp, gp])?;
                }
            }
        }
        // w = exp(-0.606531 sigmoid(w0 + hw @ w2)), a = sigmoid(a0 + ha @ a2),
        // vg = sigmoid(v0 + hv @ v2), g = hg @ g2
        {
            let wp = prod(
                &at.w.up,
                first(hw, t, at.w.width),
                RowsMut::new(w, 0, t, d),
                Then::SigmoidDecay(&at.w0),
            );
            let ap = prod(
                &at.a.up,
                first(ha, t, at.a.width),
                RowsMut::new(a, 0, t, d),
                Then::SigmoidPlus(&at.a0),
            );
            let gp = prod(
                &at.g.up,
                first(hg, n, at.g.width),
                RowsMut::new(g, 0, n, d),
                Then::None,
            );
            let vres = at.v.as_ref().map(|res| {
                let y = RowsMut::new(&mut *vg, 0, t, d);
                prod(
                    &res.lora.up,
                    first(hv, t, res.lora.width),
                    y,
                    Then::SigmoidPlus(&res.v0),
                )
            });
            match (vres, from == 0) {
                (Some(vp), true) => be.products(prec, &mut [wp, ap, vp, gp])?,
                (None, true) => be.products(prec, &mut [wp, ap, gp])?,
                (Some(vp), false) => {
                    be.products(prec, &mut [wp, ap, vp])?;
                    be.products(prec, &mut [gp])?;
                }
                (None, false) => {
                    be.products(prec, &mut [wp, ap])?;
                    be.products(prec, &mut [gp])?;
                }
            }
        }
        let all = |m| first(m, t, d);
        be.wkv7(
            Wkv7 {
                heads: c.n_head,
                r: all(r),
                w: all(w),
                k: all(k),
                v: all(v),
                a: all(a),
                vg: at.v.as_ref().map(|_| first(vg, t, d)),
                v_first: RowsMut::new(v_first, 0, t, d),
                k_k: &at.k_k,
                k_a: &at.k_a,
                r_k: &at.r_k,
                state: c.state_shape().wkv(layer),
                out: RowsMut::new(out, 0, t, d),
                ln_x: at.ln_x.norm(GN_EPS),
                g: Rows::new(g, 0, n, d),
                from,
            },
            batch,
            states,
        )?;
        be.products(
            prec,
            &mut [Product {
                w: &at.output,
                x: Rows::new(out, from, n, d),
                y: RowsMut::new(y, 0, n, d),
                then: Then::Residual(RowsMut::new(x, from, n, d)),
            }],
        )
    }

    /// `x [T, D] += Wv relu(Wk xk)^2` for the rows from `from` on (`from <= T`); rows
    /// before it stay as they are (the token shift still reads row `from - 1`, and the
    /// state takes the last row).
    #[allow(clippy::too_many_arguments)]
    fn channel_mix(
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
            rows: (_, from),
            ..
        } = pass;
        let (f, c) = (&l.ffn, &self.cfg);
        let (d, n) = (c.n_embd, t - from);
        let Scratch {
            xx,
            sx,
            mixed: [xk, ..],
            kf,
            y,
            deep,
            ..
        } = sc;
        be.norm_shift(
            NormShift {
                x: Rows::new(x, 0, t, d),
                ln: l.ln2.norm(LN_EPS),
                shift: c.state_shape().ffn_shift(layer),
                xx: RowsMut::new(xx, 0, t, d),
                sx: RowsMut::new(sx, 0, t, d),
                from,
                mixes: &mut [Mix {
                    maa: &f.x_k,
                    out: RowsMut::new(xk, 0, n, d),
                }],
            },
            batch,
            states,
        )?;
        if n == 0 {
            return Ok(());
        }
        be.products(
            prec,
            &mut [Product {
                w: &f.key,
                x: Rows::new(xk, 0, n, d),
                y: RowsMut::new(kf, 0, n, c.ffn),
                then: Then::ReluSquared,
            }],
        )?;
        if let Some(de) = &f.deep {
            let (x, k) = (Rows::new(xx, from, n, d), RowsMut::new(kf, 0, n, c.ffn));
            de.scale(be, deep, prec, pass.tokens, from, x, k)?;
        }
        be.products(
            prec,
            &mut [Product {
                w: &f.value,
                x: Rows::new(kf, 0, n, c.ffn),
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

fn prod<'a, B: Backend>(
    w: &'a B::Matrix,
    x: Rows<'a, B::Tensor>,
    y: RowsMut<'a, B::Tensor>,
    then: Then<'a, B::Tensor>,
) -> Product<'a, B> {
    Product { w, x, y, then }
}
