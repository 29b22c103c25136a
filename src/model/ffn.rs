//! The receptance-gated channel mix (FFN) that RWKV-4, RWKV-5.2 and RWKV-6 share, written
//! once: `x += sigmoid(Wr xr) * (Wv relu(Wk xk)^2)`, with `xk`, `xr` the token-shift mixes of
//! the layer's normed input.
//!
//! Notation: `D` width, `F` FFN width, `T` rows of the call.

use super::ends::LN_EPS;
use super::load::{Affine, Loader};
use super::version::Pass;
use crate::backend::{Backend, Mix, NormShift, Product, Rows, RowsMut, StateShape, Then};
use crate::error::Result;

/// How a version stores its token-shift mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mixing {
    /// RWKV-6 `time_maa_*`: `x + (prev - x) * maa`, the backend's form.
    Maa,
    /// RWKV-4 and RWKV-5 `time_mix_*`: `x * mix + prev * (1 - mix)`, the same with `maa = 1
    /// - mix`, converted at load.
    Mix,
}

impl Mixing {
    /// The mix vector `blocks.{i}.{stored}` (`[D]` or `[1, 1, D]`) in the backend's form.
    pub fn load<B: Backend>(self, l: &Loader<B>, canon: &str, d: usize) -> Result<B::Tensor> {
        let v = l.host_vector(canon, &[d])?;
        match self {
            Mixing::Maa => l.be.vector(&v),
            Mixing::Mix => l.be.vector(&v.iter().map(|m| 1.0 - m).collect::<Vec<_>>()),
        }
    }
}

/// Channel mix weights of one layer.
pub struct Ffn<B: Backend> {
    /// `[D]` each, as `maa` ([`Mixing::Maa`]).
    pub maa_k: B::Tensor,
    pub maa_r: B::Tensor,
    /// `[F, D]`
    pub key: B::Matrix,
    /// `[D, D]`
    pub receptance: B::Matrix,
    /// `[D, F]`
    pub value: B::Matrix,
}

/// The activations the channel mix works in, borrowed from its version's scratch: `[T,
/// D]` each but `kk [T, F]`.
pub struct Bufs<'s, B: Backend> {
    pub xx: &'s mut B::Tensor,
    pub sx: &'s mut B::Tensor,
    pub xk: &'s mut B::Tensor,
    pub xr: &'s mut B::Tensor,
    pub kk: &'s mut B::Tensor,
    pub rr: &'s mut B::Tensor,
    pub y: &'s mut B::Tensor,
}

impl<B: Backend> Ffn<B> {
    /// Layer `i`'s weights; the mixes are `ffn.{mix}_k` and `ffn.{mix}_r` (`time_maa` or
    /// `time_mix`, as `mixing` says).
    pub fn load(l: &Loader<B>, i: usize, d: usize, f: usize, mixing: Mixing) -> Result<Ffn<B>> {
        let p = |s: &str| format!("blocks.{i}.{s}");
        let mix = match mixing {
            Mixing::Maa => "time_maa",
            Mixing::Mix => "time_mix",
        };
        Ok(Ffn {
            maa_k: mixing.load(l, &p(&format!("ffn.{mix}_k")), d)?,
            maa_r: mixing.load(l, &p(&format!("ffn.{mix}_r")), d)?,
            key: l.matrix(&p("ffn.key.weight"), &[f, d])?,
            receptance: l.matrix(&p("ffn.receptance.weight"), &[d, d])?,
            value: l.matrix(&p("ffn.value.weight"), &[d, f])?,
        })
    }

    /// The names of its matrices in layer `i`, for the model's matrix listing.
    pub fn matrices<'a>(&'a self, i: usize, out: &mut Vec<(String, &'a B::Matrix)>) {
        for (name, m) in [
            ("ffn.key.weight", &self.key),
            ("ffn.receptance.weight", &self.receptance),
            ("ffn.value.weight", &self.value),
        ] {
            out.push((format!("blocks.{i}.{name}"), m));
        }
    }

    /// `x [T, D] += sigmoid(Wr xr) * (Wv relu(Wk xk)^2)` for the rows from `from` on (`from
    /// <= T`, `pass.rows.1`), with `xx = LayerNorm(x; ln2)`; rows before it stay as they are
    /// (the token shift still reads row `from - 1`, and the state takes the last row).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        ln2: &Affine<B>,
        shape: StateShape,
        layer: usize,
        x: &mut B::Tensor,
        b: Bufs<'_, B>,
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
        let (d, n) = (shape.embd, t - from);
        let f = self.key_width();
        let Bufs {
            xx,
            sx,
            xk,
            xr,
            kk,
            rr,
            y,
        } = b;
        be.norm_shift(
            NormShift {
                x: Rows::new(x, 0, t, d),
                ln: ln2.norm(LN_EPS),
                shift: shape.ffn_shift(layer),
                xx: RowsMut::new(xx, 0, t, d),
                sx: RowsMut::new(sx, 0, t, d),
                from,
                mixes: &mut [
                    Mix {
                        maa: &self.maa_k,
                        out: RowsMut::new(xk, 0, n, d),
                    },
                    Mix {
                        maa: &self.maa_r,
                        out: RowsMut::new(xr, 0, n, d),
                    },
                ],
            },
            batch,
            states,
        )?;
        if n == 0 {
            return Ok(());
        }
        be.products(
            prec,
            &mut [
                Product {
                    w: &self.key,
                    x: Rows::new(xk, 0, n, d),
                    y: RowsMut::new(kk, 0, n, f),
                    then: Then::ReluSquared,
                },
                Product {
                    w: &self.receptance,
                    x: Rows::new(xr, 0, n, d),
                    y: RowsMut::new(rr, 0, n, d),
                    then: Then::Sigmoid,
                },
            ],
        )?;
        be.products(
            prec,
            &mut [Product {
                w: &self.value,
                x: Rows::new(kk, 0, n, f),
                y: RowsMut::new(y, 0, n, d),
                then: Then::GatedResidual {
                    gate: Rows::new(rr, 0, n, d),
                    x: RowsMut::new(x, from, n, d),
                },
            }],
        )
    }

    /// `F`.
    fn key_width(&self) -> usize {
        B::matrix_info(&self.key).rows
    }
}
