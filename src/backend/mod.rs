//! The narrow interface the model code calls. A backend owns the arithmetic over whole
//! tensors: matrix products against stored weights, the norms and the wkv recurrence. The
//! model code (`model::v6`) owns the order of operations and nothing else, so a faster CPU
//! path or another device slots in here without touching the model.

pub mod cpu;
pub mod opencl;

use crate::tensor::Matrix;

/// How sequence products (four tokens or more: prompts, scoring) round their activations.
/// One-token products (generation) always keep f32 activations: they are bound by memory,
/// not arithmetic, so rounding would buy nothing there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 activations: the products of the stored weights, as exact as f32 sums get.
    #[default]
    F32,
    /// Activations rounded to bf16 (and f16, int8 and nf4 weights widened to bf16), then
    /// multiplied by `vdpbf16ps`, twice the rate of f32 FMAs, on CPUs with AVX-512 BF16;
    /// [`Precision::F32`] elsewhere and on OpenCL devices. What it costs in quality is
    /// measured in the README.
    Bf16,
}

/// What a product (or the recurrence) does to its outputs once they are summed, in place:
/// `f(token, first output, outputs)` on a run of one token's consecutive outputs. The CPU
/// backend calls it from the task that summed the run, while the run is in that core's
/// cache, so that the elementwise step after a product runs on every thread at once instead
/// of on one while the others wait. A product's runs may be split anywhere, so there it
/// must treat each output on its own (its value may depend on its token and index only) for
/// no split to change a bit; [`Backend::wkv`] gives it one head's outputs at a time.
pub type Then<'a> = &'a (dyn Fn(usize, usize, &mut [f32]) + Sync);

/// One product of [`Backend::matmuls`]: `W [out, in]`, `x [t, in]` -> `y [t, out]`, then
/// `then` over `y` if given.
pub struct MatJob<'a> {
    pub w: &'a Matrix,
    pub x: &'a [f32],
    pub y: &'a mut [f32],
    pub then: Option<Then<'a>>,
}

impl<'a> MatJob<'a> {
    /// `y = x . W^T`.
    pub fn new(w: &'a Matrix, x: &'a [f32], y: &'a mut [f32]) -> MatJob<'a> {
        MatJob {
            w,
            x,
            y,
            then: None,
        }
    }

    /// This product followed by `f` (see [`Then`]).
    pub fn then(self, f: Then<'a>) -> MatJob<'a> {
        MatJob {
            then: Some(f),
            ..self
        }
    }
}

/// Operations over row-major f32 activations. `t` is the number of tokens (rows).
pub trait Backend: Send + Sync {
    /// `W [out, in]`, `x [t, in]` -> `y [t, out]`: `y[t, o] = sum_i W[o, i] x[t, i]`.
    fn matmul(&self, w: &Matrix, x: &[f32], t: usize, y: &mut [f32]);

    /// Independent products over the same `t` tokens, each exactly as [`Backend::matmul`]
    /// computes it and followed by its [`MatJob::then`]; a backend may run them together
    /// (the CPU backend shares one parallel region between them, which matters when a
    /// token takes milliseconds).
    fn matmuls(&self, t: usize, jobs: &mut [MatJob<'_>]) {
        for j in jobs {
            self.matmul(j.w, j.x, t, j.y);
            if let Some(f) = j.then {
                for (ti, y) in j.y.chunks_mut(j.w.rows).enumerate() {
                    f(ti, 0, y);
                }
            }
        }
    }

    /// Per row of `x [t, D]`: `(x - mean) / sqrt(var + eps) * weight + bias`, in place.
    fn layer_norm(&self, x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32);

    /// Per row of `x [t, H * S]`, each of the `H` groups of `S` channels normalised on its
    /// own, then `* weight + bias` over the row, in place.
    fn group_norm(&self, x: &mut [f32], heads: usize, weight: &[f32], bias: &[f32], eps: f32);

    /// The RWKV-6 recurrence over `t` tokens, `D = H * S`:
    /// `r, k, v, w [t, D]`, `u [H, S]`, `state [H, S, S]` (`[head, key, value]`, updated),
    /// `out [t, D]`. Per head and token:
    /// `out[j] = sum_i r[i] (u[i] k[i] v[j] + s[i][j])`, then `s[i][j] = k[i] v[j] + w[i] s[i][j]`;
    /// then `then` over each head's outputs of each token (runs of `S`), if given.
    #[allow(clippy::too_many_arguments)]
    fn wkv(
        &self,
        heads: usize,
        r: &[f32],
        k: &[f32],
        v: &[f32],
        w: &[f32],
        u: &[f32],
        state: &mut [f32],
        out: &mut [f32],
        then: Option<Then<'_>>,
    );
}
