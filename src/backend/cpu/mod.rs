//! The CPU backend: hand-vectorised kernels (AVX-512 or AVX2 chosen at run time, `wide`
//! elsewhere), each with a scalar twin the tests hold it to, threaded with rayon.
//!
//! - [`schedule`]: the parallel region that runs independent products as row tasks;
//! - [`plan`]: which kernel runs a product;
//! - [`dense`]: f32, f16 and bf16 weights; [`bf16`]: bf16 activations and panels;
//! - [`quant`]: int8 and nf4 weights against integer activations;
//! - [`wkv`], [`wkv7`]: the recurrences; [`norm`]: norms, token shift, mixes; [`epilogue`]: the
//!   elementwise steps after products;
//! - [`arch`]: the per-ISA kernels; [`scalar`]: the twins; [`tuning`]: the constants.
//!
//! Threads split output rows (products) or heads (recurrences); every output element is
//! computed by one thread in a fixed order, so results do not depend on the thread count.

pub mod arch;
pub mod bf16;
pub mod caps;
pub mod dense;
pub mod epilogue;
pub mod norm;
pub mod plan;
pub mod quant;
pub mod scalar;
pub mod schedule;
pub mod shared;
#[cfg(test)]
pub(crate) mod tests;
pub mod tuning;
pub mod wkv;
pub mod wkv4;
pub mod wkv7;

use super::{
    Backend, Decay, Lora, NormShift, Precision, Product, RowProduct, Rows, RowsMut, StateData,
    Then, Wkv4, Wkv6, Wkv7,
};
use crate::error::Result;
use crate::isa::Isa;
use crate::tensor::{Data, Matrix};
use epilogue::Step;
use schedule::Region;
pub use schedule::{matmul_with, matmuls_with, MatJob};
use shared::SharedMut;
use std::cell::RefCell;
use std::ops::Range;

/// The CPU backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu {
    /// Store int8 and nf4 matrices in panels where the integer panel kernel runs
    /// ([`crate::tensor::panels`]), so that products over many tokens (batches of
    /// streams, prompts) never pack them; one token reads a panel as fast as rows.
    pub panels: bool,
}

/// The streams of a call: each stream's rows.
#[derive(Debug, Default)]
pub struct CpuBatch {
    spans: Vec<Range<usize>>,
}

thread_local! {
    /// A LoRA's hidden columns for each up-projection, `[ups][t, width]`.
    static PARTS: RefCell<Vec<Vec<f32>>> = RefCell::default();
}

/// The elements of `r` in its tensor.
fn slice<'a>(r: &Rows<'a, Vec<f32>>) -> &'a [f32] {
    &r.t[r.span()]
}

fn slice_mut<'a>(r: RowsMut<'a, Vec<f32>>) -> &'a mut [f32] {
    let span = r.span();
    &mut r.t[span]
}

/// `then` as the CPU's [`Step`].
fn step<'a>(then: Then<'a, Vec<f32>>) -> Step<'a> {
    match then {
        Then::None => Step::None,
        Then::Tanh => Step::Tanh,
        Then::Sigmoid => Step::Sigmoid,
        Then::Silu => Step::Silu,
        Then::ReluSquared => Step::ReluSquared,
        Then::ExpNegExp(b) => Step::ExpNegExp(b),
        Then::SigmoidDecay(b) => Step::SigmoidDecay(b),
        Then::SigmoidPlus(b) => Step::SigmoidPlus(b),
        Then::Mix { xx, sx, maa } => Step::Mix {
            xx: slice(&xx),
            sx: slice(&sx),
            maa,
        },
        Then::Residual(x) => Step::Residual(SharedMut::new(slice_mut(x))),
        Then::Scale { bias, x } => Step::Scale {
            bias,
            x: SharedMut::new(slice_mut(x)),
        },
        Then::GatedResidual { gate, x } => Step::GatedResidual {
            gate: slice(&gate),
            x: SharedMut::new(slice_mut(x)),
        },
    }
}

impl Backend for Cpu {
    type Tensor = Vec<f32>;
    type Matrix = Matrix;
    type State = Vec<f32>;
    type Batch = CpuBatch;

    fn bf16_products(&self) -> bool {
        bf16_products_here()
    }

    fn describe(&self) -> String {
        format!(
            "cpu ({:?}, {} threads)",
            Isa::detect(),
            rayon::current_num_threads()
        )
    }

    /// int8 and nf4 matrices go into panels if asked ([`Cpu::panels`]) and the integer
    /// panel kernel runs here for them; the rest stay as loaded.
    fn matrix(&self, m: Matrix) -> Result<Matrix> {
        use crate::tensor::panels::{nf4_to_panels, q8_to_panels};
        let runs = |nf4| self.panels && quant::panel::Panel::runs(Isa::detect(), nf4);
        let data = match &m.data {
            Data::Q8(q) if runs(false) => Data::Q8Panels(q8_to_panels(q, m.rows, m.cols)),
            Data::Nf4(q) if runs(true) => Data::Nf4Panels(nf4_to_panels(q, m.rows, m.cols)),
            _ => return Ok(m),
        };
        Ok(Matrix {
            rows: m.rows,
            cols: m.cols,
            data,
        })
    }

    fn host_matrix(m: &Matrix) -> Option<&Matrix> {
        Some(m)
    }

    fn matrix_info(m: &Matrix) -> super::MatrixInfo {
        super::MatrixInfo::of(m)
    }

    fn vector(&self, v: &[f32]) -> Result<Vec<f32>> {
        Ok(v.to_vec())
    }

    fn tensor(&self) -> Vec<f32> {
        Vec::new()
    }

    fn reserve(&self, t: &mut Vec<f32>, n: usize) -> Result<()> {
        if t.len() < n {
            t.resize(n, 0.0);
        }
        Ok(())
    }

    fn read(&self, x: Rows<Vec<f32>>, out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        out.extend_from_slice(slice(&x));
        Ok(())
    }

    fn state_mut<'s>(&self, s: &'s mut StateData) -> Result<&'s mut Vec<f32>> {
        if let StateData::Device(d) = s {
            *s = StateData::Host(d.download()?);
        }
        match s {
            StateData::Host(v) => Ok(v),
            StateData::Device(_) => unreachable!("moved to the host above"),
        }
    }

    fn batch(&self) -> CpuBatch {
        CpuBatch::default()
    }

    fn set_batch(
        &self,
        b: &mut CpuBatch,
        spans: &[Range<usize>],
        _: &[&mut Vec<f32>],
    ) -> Result<()> {
        b.spans.clear();
        b.spans.extend_from_slice(spans);
        Ok(())
    }

    /// The forward pass runs on a pool thread, so that its parallel regions split from
    /// there: the calling thread, which would only wait, hands over once a call instead of
    /// once a product.
    fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        rayon::scope(|_| f())
    }

    fn embed(
        &self,
        emb: &Matrix,
        ln0: Option<super::Norm<Vec<f32>>>,
        tokens: &[u32],
        x: RowsMut<Vec<f32>>,
    ) -> Result<()> {
        let d = x.cols;
        let x = slice_mut(x);
        for (row, &tok) in x.chunks_mut(d).zip(tokens) {
            emb.row_f32(tok as usize, row);
        }
        if let Some(ln0) = ln0 {
            norm::layer_norm(x, ln0.w, ln0.b, ln0.eps);
        }
        Ok(())
    }

    fn row_products(&self, op: RowProduct<Self>) -> Result<()> {
        let RowProduct { x, m, out } = op;
        let (i_n, j_n) = (x.cols, out.cols);
        assert_eq!(m.cols, i_n * j_n, "row_products: m is not [n, I * J]");
        let (x, m, out) = (slice(&x), slice(&m), slice_mut(out));
        for ((x, m), out) in x
            .chunks(i_n)
            .zip(m.chunks(i_n * j_n))
            .zip(out.chunks_mut(j_n))
        {
            out.fill(0.0);
            for (&xi, mi) in x.iter().zip(m.chunks(j_n)) {
                out.iter_mut().zip(mi).for_each(|(o, &w)| *o += xi * w);
            }
        }
        Ok(())
    }

    fn layer_norm(&self, x: RowsMut<Vec<f32>>, ln: super::Norm<Vec<f32>>) -> Result<()> {
        norm::layer_norm(slice_mut(x), ln.w, ln.b, ln.eps);
        Ok(())
    }

    fn norm_shift(
        &self,
        op: NormShift<Self>,
        batch: &CpuBatch,
        states: &mut [&mut Vec<f32>],
    ) -> Result<()> {
        let NormShift {
            x,
            ln,
            shift,
            xx,
            sx,
            from,
            mixes,
        } = op;
        let d = x.cols;
        let xx = slice_mut(xx);
        xx.copy_from_slice(slice(&x));
        norm::layer_norm(xx, ln.w, ln.b, ln.eps);
        let sx = slice_mut(sx);
        norm::token_shifts(xx, sx, d, &batch.spans, states, shift);
        for m in mixes.iter_mut() {
            let out = slice_mut(m.out.reborrow());
            norm::mix(&xx[from * d..], &sx[from * d..], m.maa, out);
        }
        Ok(())
    }

    fn products(&self, prec: Precision, jobs: &mut [Product<Self>]) -> Result<()> {
        let Some(t) = jobs.first().map(|j| j.x.rows) else {
            return Ok(());
        };
        let mut region = Region::default();
        for j in jobs.iter_mut() {
            assert_eq!(j.x.rows, t, "products: jobs over different token counts");
            let then = std::mem::replace(&mut j.then, Then::None);
            region.push(j.w, slice(&j.x), slice_mut(j.y.reborrow()), step(then));
        }
        region.run(Isa::detect(), prec, t);
        Ok(())
    }

    fn lora(&self, prec: Precision, op: Lora<Self>) -> Result<()> {
        let Lora {
            x,
            down,
            act,
            hidden,
            ups,
        } = op;
        let (t, width) = (x.rows, down.rows);
        self.reserve(hidden, t * width)?;
        let h = &mut hidden[..t * width];
        let mut region = Region::default();
        region.push(down, slice(&x), h, step(act));
        region.run(Isa::detect(), prec, t);
        // Each up-projection's columns of the hidden layer, as its own [t, in] input.
        let h = &hidden[..t * width];
        shared::with_scratch(&PARTS, |parts| {
            if parts.len() < ups.len() {
                parts.resize_with(ups.len(), Vec::new);
            }
            for (up, part) in ups.iter().zip(parts.iter_mut()) {
                let n = up.w.cols;
                if part.len() < t * n {
                    part.resize(t * n, 0.0);
                }
                for (ti, row) in part[..t * n].chunks_mut(n).enumerate() {
                    row.copy_from_slice(&h[ti * width + up.from..ti * width + up.from + n]);
                }
            }
            let mut region = Region::default();
            for (up, part) in ups.iter_mut().zip(parts.iter()) {
                let then = std::mem::replace(&mut up.then, Then::None);
                let input = &part[..t * up.w.cols];
                region.push(up.w, input, slice_mut(up.y.reborrow()), step(then));
            }
            region.run(Isa::detect(), prec, t);
        });
        Ok(())
    }

    fn wkv6(
        &self,
        prec: Precision,
        op: Wkv6<Self>,
        batch: &CpuBatch,
        states: &mut [&mut Vec<f32>],
    ) -> Result<()> {
        let Wkv6 {
            heads,
            r,
            k,
            v,
            decay,
            decay_bias,
            w,
            u,
            state,
            out,
            ln_x,
            g,
            from,
        } = op;
        let t = r.rows;
        let d = r.cols;
        let w = slice_mut(w);
        let w: &[f32] = match decay {
            Decay::Lora { hidden, up } => {
                let mut region = Region::default();
                region.push(up, slice(&hidden), w, Step::ExpNegExp(decay_bias));
                region.run(Isa::detect(), prec, t);
                w
            }
            Decay::Fixed => {
                let w = &mut w[..d];
                for (w, b) in w.iter_mut().zip(decay_bias) {
                    *w = (-b.exp()).exp();
                }
                w
            }
        };
        // The outputs group-normed and gated a head at a time, as each head's task ends.
        let g = slice(&g);
        let gated = |ti: usize, c0: usize, o: &mut [f32]| {
            let ch = c0..c0 + o.len();
            norm::group_norm(o, &ln_x.w[ch.clone()], &ln_x.b[ch], ln_x.eps);
            let g = &g[(ti - from) * d + c0..];
            o.iter_mut().zip(g).for_each(|(o, g)| *o *= g);
        };
        let mut wkv_states: Vec<&mut [f32]>;
        let mut one: [&mut [f32]; 1];
        let states: &mut [&mut [f32]] = match states {
            [s] => {
                one = [&mut s[state.clone()]];
                &mut one
            }
            _ => {
                wkv_states = states.iter_mut().map(|s| &mut s[state.clone()]).collect();
                &mut wkv_states
            }
        };
        wkv::wkv6_with(
            Isa::detect(),
            heads,
            &batch.spans,
            slice(&r),
            slice(&k),
            slice(&v),
            w,
            u,
            states,
            slice_mut(out),
            from,
            Some(&gated),
        );
        Ok(())
    }

    fn wkv4(&self, op: Wkv4<Self>, batch: &CpuBatch, states: &mut [&mut Vec<f32>]) -> Result<()> {
        let Wkv4 {
            k,
            v,
            r,
            w,
            u,
            state,
            out,
            from,
        } = op;
        let ins = (slice(&k), slice(&v), slice(&r));
        let mut one: [&mut [f32]; 1];
        let mut many: Vec<&mut [f32]>;
        let parts: &mut [&mut [f32]] = match states {
            [s] => {
                one = [&mut s[state.clone()]];
                &mut one
            }
            _ => {
                many = states.iter_mut().map(|s| &mut s[state.clone()]).collect();
                &mut many
            }
        };
        wkv4::wkv4(&batch.spans, ins, (w, u), parts, slice_mut(out), from);
        Ok(())
    }

    fn wkv7(&self, op: Wkv7<Self>, batch: &CpuBatch, states: &mut [&mut Vec<f32>]) -> Result<()> {
        let Wkv7 {
            heads,
            r,
            w,
            k,
            v,
            a,
            vg,
            v_first,
            k_k,
            k_a,
            r_k,
            state,
            out,
            ln_x,
            g,
            from,
        } = op;
        let v_first = slice_mut(v_first);
        let (k, v) = (slice(&k), slice(&v));
        let residual = match &vg {
            Some(vg) => Some((slice(vg), &*v_first)),
            None => {
                v_first.copy_from_slice(v);
                None
            }
        };
        let x = wkv7::Wkv7In {
            r: slice(&r),
            w: slice(&w),
            k,
            v,
            a: slice(&a),
            residual,
            k_k,
            k_a,
            r_k,
            ln: (ln_x.w, ln_x.b, ln_x.eps),
            g: slice(&g),
        };
        let out = slice_mut(out);
        let isa = Isa::detect();
        match states {
            // one stream: no list to allocate
            [s] => wkv7::wkv7_with(isa, heads, &batch.spans, x, &mut [&mut s[state]], out, from),
            _ => {
                let mut parts: Vec<&mut [f32]> =
                    states.iter_mut().map(|s| &mut s[state.clone()]).collect();
                wkv7::wkv7_with(isa, heads, &batch.spans, x, &mut parts, out, from)
            }
        }
        Ok(())
    }
}

/// Whether this CPU has the bf16 products of [`Precision::Bf16`].
pub use bf16::bf16_products_here;
