//! RWKV-7a's DeepEmbed: one layer's per-token scale of the FFN key, its weights and its
//! activations (the math: [`super::v7a`] and the DeepEmbed section of `docs/RWKV7.md`).

use super::ends::Ends;
use super::load::Loader;
use super::version::Config;
use crate::backend::{Backend, Precision, Product, RowProduct, Rows, RowsMut, Then};
use crate::error::Result;
use crate::tensor::Matrix;

/// A token's table row is an `R x R` matrix.
pub const R: usize = 32;

/// One layer's DeepEmbed weights.
pub struct DeepEmbed<B: Backend> {
    /// `[V, R*R]`, on the host where the file maps it: a call reads its tokens' rows.
    pub s_emb: Matrix,
    /// `[R*R, D]`
    pub s_emb_x: B::Matrix,
    /// `[R, D]` (stored `[D, R]`, used as `x @ s1`).
    pub s1: B::Matrix,
    /// `[F, R]` (stored `[R, F]`).
    pub s2: B::Matrix,
    /// `[F]`
    pub s0: B::Tensor,
}

/// The activations DeepEmbed works in, beside its layer's.
pub struct Scratch<B: Backend> {
    /// The ln0 output `[T, D]`, embedded at layer 0 for all layers.
    x0: B::Tensor,
    /// Each token's matrix `[T, R*R]`, and `s_emb_x x0` before it joins it.
    m: B::Tensor,
    e: B::Tensor,
    /// `x @ s1` and then `@ M`, `[T, R]` each; `@ s2`, `[T, F]`.
    h: B::Tensor,
    h2: B::Tensor,
    z: B::Tensor,
}

impl<B: Backend> Scratch<B> {
    pub fn new(be: &B) -> Scratch<B> {
        let t = || be.tensor();
        Scratch {
            x0: t(),
            m: t(),
            e: t(),
            h: t(),
            h2: t(),
            z: t(),
        }
    }

    /// Grow for `t` rows of a model `cfg`.
    pub fn reserve(&mut self, be: &B, cfg: &Config, t: usize) -> Result<()> {
        be.reserve(&mut self.x0, t * cfg.n_embd)?;
        be.reserve(&mut self.m, t * R * R)?;
        be.reserve(&mut self.e, t * R * R)?;
        be.reserve(&mut self.h, t * R)?;
        be.reserve(&mut self.h2, t * R)?;
        be.reserve(&mut self.z, t * cfg.ffn)
    }

    /// At layer 0: `x0 [T, D]` = the ln0 output of `tokens`.
    pub fn embed(&mut self, be: &B, ends: &Ends<B>, tokens: &[u32]) -> Result<()> {
        ends.embed(be, tokens, &mut self.x0)
    }
}

impl<B: Backend> DeepEmbed<B> {
    /// Layer `i`'s weights.
    pub fn load(l: &Loader<B>, cfg: &Config, i: usize) -> Result<DeepEmbed<B>> {
        let (d, f, v) = (cfg.n_embd, cfg.ffn, cfg.vocab);
        let p = |s: &str| format!("blocks.{i}.ffn.{s}");
        let s_emb = l.host_matrix(&p("s_emb.weight"), &[v, R * R])?;
        l.ck.random_access(l.names.stored(&p("s_emb.weight")));
        let s0 = l.host_vector(&p("s0"), &[f])?;
        Ok(DeepEmbed {
            s_emb,
            s_emb_x: l.matrix(&p("s_emb_x.weight"), &[R * R, d])?,
            s1: l
                .be
                .matrix(l.host_matrix(&p("s1"), &[d, R])?.transposed())?,
            s2: l
                .be
                .matrix(l.host_matrix(&p("s2"), &[R, f])?.transposed())?,
            s0: l.be.vector(&s0)?,
        })
    }

    /// `k [n, F] *= ((x @ s1) @ M) @ s2 + s0` for the rows `from..T` of the call (`k`'s and
    /// `x`'s row 0 is row `from`; `x [n, D]` the ln2 output, `tokens` the rows' tokens).
    #[allow(clippy::too_many_arguments)]
    pub fn scale(
        &self,
        be: &B,
        sc: &mut Scratch<B>,
        prec: Precision,
        tokens: &[u32],
        from: usize,
        x: Rows<'_, B::Tensor>,
        k: RowsMut<'_, B::Tensor>,
    ) -> Result<()> {
        let (n, d, f) = (x.rows, x.cols, k.cols);
        let rr = R * R;
        let Scratch { x0, m, e, h, h2, z } = sc;
        // M = s_emb[t] + s_emb_x x0;  h = x @ s1
        be.embed(
            &self.s_emb,
            None,
            &tokens[from..],
            RowsMut::new(m, 0, n, rr),
        )?;
        be.products(
            prec,
            &mut [
                Product {
                    w: &self.s_emb_x,
                    x: Rows::new(x0, from, n, d),
                    y: RowsMut::new(e, 0, n, rr),
                    then: Then::Residual(RowsMut::new(m, 0, n, rr)),
                },
                Product {
                    w: &self.s1,
                    x,
                    y: RowsMut::new(h, 0, n, R),
                    then: Then::None,
                },
            ],
        )?;
        // h2 = h @ M, per row;  k *= h2 @ s2 + s0
        be.row_products(RowProduct {
            x: Rows::new(h, 0, n, R),
            m: Rows::new(m, 0, n, rr),
            out: RowsMut::new(h2, 0, n, R),
        })?;
        be.products(
            prec,
            &mut [Product {
                w: &self.s2,
                x: Rows::new(h2, 0, n, R),
                y: RowsMut::new(z, 0, n, f),
                then: Then::Scale {
                    bias: &self.s0,
                    x: k,
                },
            }],
        )
    }

    /// The names of its matrices in layer `i`.
    pub fn matrices<'a>(&'a self, i: usize, out: &mut Vec<(String, &'a B::Matrix)>) {
        for (name, m) in [
            ("ffn.s_emb_x.weight", &self.s_emb_x),
            ("ffn.s1", &self.s1),
            ("ffn.s2", &self.s2),
        ] {
            out.push((format!("blocks.{i}.{name}"), m));
        }
    }
}
